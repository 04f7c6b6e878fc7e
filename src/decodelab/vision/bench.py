"""Decode-speed benchmark: decoders compared on the same model, the same conditions and seeds.

Reports per decoder: mean forwards per image (nfe), step compression ``nfe(ar) / nfe(x)``, batch
step compression (forwards of the whole run, ``ar``'s / the decoder's: what batching keeps of it),
wall-clock speed-up vs ``ar`` (median over repeats, all decoders timed in the same run,
interleaved), mean tokens accepted per forward and their histogram, and tokens per second.

Decoders that run a drafter (``mulo``) get it and the up-sampler from the run (``drafter=``,
``upsampler=``; warm-up included); their forwards are counted per model from
``DecodeOutput.nfe_by_model`` (``forwards_by_model``: target and drafter separately) and their wall
time is the decoder's, which includes the drafter and the up-sampler (broken down in
``time_breakdown_s``).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from decodelab.speculative.base import create_decoder
from decodelab.speculative.sampling import SamplingConfig, row_generators

__all__ = ["benchmark_decoders", "benchmark_runs", "format_table"]


def benchmark_decoders(
    model,
    conds: torch.Tensor,
    decoders: dict[str, dict[str, Any]],
    *,
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 1,
    repeats: int = 3,
    cond_mask: torch.Tensor | None = None,
    warmup: bool = True,
    drafter=None,
    upsampler: Any = None,
    components: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run every decoder over ``conds`` in batches of ``batch_size``; repeat ``repeats`` times.

    Args:
        model: the image-token model (a ``TokenModel``).
        conds: all conditions ``[M, ...]`` (one image each).
        decoders: label -> ``{"name": registered name, **decoder kwargs}``; ``"ar"`` is required
            as the reference.
        sampling: shared sampling settings.
        seed: per-image generator streams are derived from it, identical for every decoder.
        batch_size: rows per forward (``max_batch`` of the decoders: ragged decoders advance rows
            independently, and continuous ones refill a finished row with the next image).
        repeats: timing repeats; the wall time reported is the median over repeats.
        drafter, upsampler: handed to the decoders that require them (``mulo``).
        components: label -> overrides of a run's ``drafter`` / ``upsampler`` and its ``record``
            (e.g. ``{"mulo-lsr": {"upsampler": lsr_up, "record": {"upsampler": "lsr"}}}``).
    """
    if "ar" not in decoders:
        raise ValueError("the benchmark needs the 'ar' reference among the decoders")
    runs = {label: {"model": model, "spec": spec, "conds": conds, "cond_mask": cond_mask, "drafter": drafter,
                    "upsampler": upsampler, **(components or {}).get(label, {})}
            for label, spec in decoders.items()}  # fmt: skip
    return benchmark_runs(runs, "ar", sampling=sampling, seed=seed, batch_size=batch_size, repeats=repeats,
                          warmup=warmup)  # fmt: skip


def benchmark_runs(
    runs: dict[str, dict[str, Any]],
    reference: str,
    *,
    sampling: SamplingConfig,
    seed: int = 0,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: bool = True,
) -> dict[str, Any]:
    """Time (model, decoder) pairs on the same images: e.g. ``ar`` on a GPT against ``nar`` on a NAR model.

    Args:
        runs: label -> ``{"model", "spec": {"name", **kwargs}, "conds", "cond_mask"}`` and optionally
            ``"sampling"`` (a model's own defaults), ``"drafter"`` and ``"upsampler"`` (for decoders that
            require them) and ``"record"`` (what to report about them, e.g. their names); every run
            decodes the same number of images (the same classes / prompts, each encoded for its model).
        reference: the label that speed-ups and step compressions are relative to.
        sampling, seed, batch_size, repeats: as :func:`benchmark_decoders`.
    """
    if reference not in runs:
        raise ValueError(f"the reference {reference!r} is not among the runs {sorted(runs)}")
    sizes = {label: int(r["conds"].shape[0]) for label, r in runs.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every run must decode the same number of images, got {sizes}")
    built = {label: create_decoder(r["spec"]["name"], **{k: v for k, v in r["spec"].items() if k != "name"})
             for label, r in runs.items()}  # fmt: skip
    M = sizes[reference]
    extra = {label: _extra_models(label, built[label], runs[label]) for label in built}

    def run_once(label: str) -> tuple[float, list]:
        r = runs[label]
        gens = row_generators(torch.Generator().manual_seed(seed), M)
        # a continuous decoder keeps batch_size rows busy; the others run M / batch_size batches
        o = built[label](r["model"], r["conds"], sampling=r.get("sampling") or sampling, generator=gens,
                         cond_mask=r["cond_mask"], max_batch=batch_size, **extra[label])  # fmt: skip
        return o.wall_time, [o]

    if warmup:
        for label, dec in built.items():
            dec(runs[label]["model"], runs[label]["conds"][:1], sampling=runs[label].get("sampling") or sampling,
                generator=torch.Generator().manual_seed(seed),
                cond_mask=None if runs[label]["cond_mask"] is None else runs[label]["cond_mask"][:1],
                **extra[label])  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in built}
    outputs: dict[str, list] = {}
    for _ in range(repeats):
        for label in built:  # interleaved, so drift affects all runs alike
            t, outs = run_once(label)
            times[label].append(t)
            outputs[label] = outs
    results: dict[str, Any] = {}
    for label, outs in outputs.items():
        N = runs[label]["model"].num_tokens
        row_nfe = torch.cat([o.row_nfe for o in outs]).float()
        batch_nfe = sum(o.nfe for o in outs)
        acc = torch.cat([o.accepted.flatten() for o in outs])
        acc = acc[acc > 0]
        hist = torch.bincount(acc).tolist()
        wall = statistics.median(times[label])
        forwards: dict[str, int] = {}
        for o in outs:
            for role, n in (o.nfe_by_model or {"target": o.nfe}).items():
                forwards[role] = forwards.get(role, 0) + int(n)
        breakdown = {k[: -len("_time_s")]: float(sum(o.extras.get(k, 0.0) for o in outs))
                     for k in ("drafter_time_s", "upsampler_time_s") if k in outs[0].extras}  # fmt: skip
        results[label] = {
            "decoder": outs[0].decoder,
            "settings": outs[0].extras.get("settings", {}),
            "sampling": vars(runs[label].get("sampling") or sampling).copy(),
            "lossless": outs[0].lossless,
            "expectation": built[label].expectation,
            "continuous_batching": bool(outs[0].extras.get("continuous", False)),
            "mean_nfe_per_image": float(row_nfe.mean()),
            "batch_forwards": batch_nfe,
            "forwards_by_model": forwards,
            "forwards_per_image_by_model": {role: n / M for role, n in forwards.items()},
            "components": dict(runs[label].get("record") or {}),
            "mean_accepted_per_forward": float(acc.float().mean()),
            "accepted_histogram": {i: c for i, c in enumerate(hist) if c},
            "wall_time_s_median": wall,
            "wall_time_s_all": times[label],
            "time_breakdown_s": breakdown,
            "images_per_s": M / wall,
            "tokens_per_s": M * N / wall,
            "tokens": torch.cat([o.tokens for o in outs]),
        }
    ref = results[reference]
    for r in results.values():
        r["step_compression"] = ref["mean_nfe_per_image"] / r["mean_nfe_per_image"]
        r["batch_step_compression"] = ref["batch_forwards"] / r["batch_forwards"]
        r["wall_speedup"] = ref["wall_time_s_median"] / r["wall_time_s_median"]
    return {
        "num_images": M,
        "num_tokens": runs[reference]["model"].num_tokens,
        "reference": reference,
        "batch_size": batch_size,
        "repeats": repeats,
        "seed": seed,
        "sampling": vars(sampling).copy(),
        "decoders": results,
    }


def _extra_models(label: str, dec, run: dict[str, Any]) -> dict[str, Any]:
    """The drafter / up-sampler keyword arguments ``dec`` requires, from its run."""
    out = {}
    for role in dec.requires:
        if run.get(role) is None:
            raise ValueError(f"decoder {label!r} needs a {role}: give the run one (CLI: --drafter / --upsampler)")
        out[role] = run[role]
    return out


#: ``format_table``'s short names of the decoder expectations
_OUTPUT = {"reference": "reference", "lossless": "lossless", "greedy_equals_ar": "greedy", "lossy": "lossy"}


def format_table(report: dict[str, Any]) -> str:
    """A short fixed-width table of a :func:`benchmark_decoders` report.

    ``output`` is the decoder's declared expectation (``reference``; ``lossless``: samples of ``ar``'s
    distribution; ``greedy``: ``ar``'s argmax tokens; ``lossy``), ``nfe/img`` counts target forwards per
    image, ``drf/img`` the drafter's (batch forwards / images; ``-`` for decoders without a drafter).
    """
    head = (
        f"{'decoder':28s} {'output':>9s} {'nfe/img':>8s} {'drf/img':>8s} {'steps x':>8s} {'batch x':>8s} "
        f"{'wall x':>7s} {'acc/fwd':>8s} {'tok/s':>8s}"
    )
    lines = [head, "-" * len(head)]
    for label, r in report["decoders"].items():
        drafter = r.get("forwards_per_image_by_model", {}).get("drafter")
        drf = "-" if drafter is None else f"{drafter:.1f}"
        lines.append(
            f"{label:28s} {_OUTPUT[r['expectation']]:>9s} "
            f"{r['mean_nfe_per_image']:8.1f} {drf:>8s} "
            f"{r['step_compression']:8.2f} {r['batch_step_compression']:8.2f} {r['wall_speedup']:7.2f} "
            f"{r['mean_accepted_per_forward']:8.2f} {r['tokens_per_s']:8.0f}"
        )
    return "\n".join(lines)
