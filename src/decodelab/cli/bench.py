"""``decodelab bench decode``: compare decoders on one model, same seeds, one run.

Decoders that run a drafter (``mulo``) take the pipeline's drafter and up-sampler (``--drafter``,
``--upsampler``; default: the pipeline's own, e.g. ``shapes-t2i`` -> ``shapes-t2i-lowres``, bicubic);
one decoder item may override them (``mulo:tau=0.05:upsampler=lsr``), so an ablation is one run::

    decodelab bench decode --model shapes-t2i --threads 2 --decoders \\
        "ar,sjd_coupled,mulo:tau=0.05:k=16,mulo:tau=0.05:k=16:upsampler=lsr,mulo:tau=0.05:k=16:islands=False"
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from decodelab.cli.generate import add_drafter_args, parse_decoder_args

#: decoder-item options that choose a run's models rather than configure the decoder
COMPONENT_OPTIONS = ("drafter", "upsampler")


def parse_decoder_list(text: str, extra: dict) -> dict[str, dict]:
    """``"ar,sjd,sjd:window=32:init=vertical"`` -> label -> spec (``--decoder-arg`` applies to all non-ar)."""
    specs = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, *opts = item.split(":")
        spec = {"name": name, **(extra if name != "ar" else {}), **parse_decoder_args(opts)}
        specs[item] = spec
    if "ar" not in specs:
        specs = {"ar": {"name": "ar"}, **specs}
    return specs


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (decode speed)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    d = bsub.add_parser(
        "decode",
        help="compare decoders on the same model and seeds",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--model", default=None, help="pipeline name or directory (or use --pairs)")
    d.add_argument("--pairs", default=None,
                   help="compare models too: MODEL:DECODER[:key=value...] items, comma-separated, e.g. "
                   "fmnist-c2i:ar,fmnist-c2i:sjd_coupled,fmnist-nar:nar (same images and seeds; the first "
                   "ar pair is the reference)")  # fmt: skip
    d.add_argument("--decoders", default="ar,jacobi,sjd", help="comma list; options as name:key=value:key=value")
    d.add_argument("--decoder-arg", action="append", metavar="KEY=VALUE", help="applied to every non-ar decoder")
    add_drafter_args(d)
    d.add_argument("--num-images", type=int, default=8)
    d.add_argument("--batch-size", type=int, default=1)
    d.add_argument("--repeats", type=int, default=3)
    d.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (recorded in the report; default: 1 at --batch-size 1, measured "
                        "faster there for the embedded models on a 2-core CPU; else torch's own choice)")  # fmt: skip
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--class-id", type=int, nargs="+", help="classes to cycle through (default: all)")
    d.add_argument("--prompt", nargs="+", help="prompts to cycle through (text-conditional models)")
    d.add_argument("--cfg-scale", type=float, default=None)
    d.add_argument("--temperature", type=float, default=None)
    d.add_argument("--top-k", type=int, default=None)
    d.add_argument("--top-p", type=float, default=None)
    d.add_argument("--json", default=None, help="write the full report here")
    d.set_defaults(func=run_decode)
    p.set_defaults(func=lambda a: p.print_help() or 1)


#: CPU threads of ``bench decode`` at batch 1 when ``--threads`` is not given: at batch 1 one thread
#: decoded faster than two for every decoder on the embedded models (README, "NAR against ar and SJD").
BATCH1_THREADS = 1


def default_threads(threads: int | None, batch_size: int) -> int | None:
    """``--threads`` if given, else :data:`BATCH1_THREADS` at batch 1, else ``None`` (torch's own choice)."""
    return threads if threads is not None else (BATCH1_THREADS if batch_size == 1 else None)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads (``None``: unchanged), restoring the previous count after."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_decode(args: argparse.Namespace) -> int:
    for flag in ("num_images", "repeats", "batch_size", "threads"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    with torch_threads(default_threads(args.threads, args.batch_size)):
        return _run_decode(args)


def _run_decode(args: argparse.Namespace) -> int:
    import torch

    from decodelab.config import write_json
    from decodelab.vision.bench import benchmark_decoders, format_table
    from decodelab.vision.pipeline import load_pipeline

    if (args.model is None) == (args.pairs is None):
        raise ValueError("give either --model (with --decoders) or --pairs MODEL:DECODER,...")
    if args.pairs is not None:
        return _run_pairs(args)
    pipe = load_pipeline(args.model, drafter=args.drafter, upsampler=args.upsampler)
    sampling = pipe.sampling_config(
        cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    conds, mask = pipe.encode_conditions(_conditions(pipe, args))
    specs = parse_decoder_list(args.decoders, parse_decoder_args(args.decoder_arg))
    components = {label: run_components(pipe, spec) for label, spec in specs.items()}
    report = benchmark_decoders(
        pipe.model, conds, specs, sampling=sampling, seed=args.seed, batch_size=args.batch_size,
        repeats=args.repeats, cond_mask=mask, components=components,
    )  # fmt: skip
    report["model"] = str(args.model)
    report["threads"] = torch.get_num_threads()
    report["trained"] = bool(pipe.info.get("trained", False))
    print(format_table(report))
    if args.json:
        clean = {**report, "decoders": {k: {kk: vv for kk, vv in v.items() if kk != "tokens"}
                                        for k, v in report["decoders"].items()}}  # fmt: skip
        write_json(args.json, clean)
        print(f"wrote {args.json}")
    return 0


def run_components(pipe, spec: dict[str, Any]) -> dict[str, Any]:
    """The drafter / up-sampler of one decoder item (``spec`` loses its component options) and their record.

    Returns ``{}`` for decoders without a drafter; else ``{"drafter": TokenModel, "upsampler": ...,
    "record": {"drafter": name, "upsampler": name}}`` (the item's ``drafter=`` / ``upsampler=`` override
    the pipeline's).
    """
    from decodelab.speculative.base import create_decoder

    chosen = {k: spec.pop(k) for k in COMPONENT_OPTIONS if k in spec}
    dec = create_decoder(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    if not dec.requires:
        if chosen:
            raise ValueError(f"decoder {spec['name']!r} runs no drafter: drop {', '.join(sorted(chosen))}=")
        return {}
    if "drafter" in chosen:  # the same target, another drafter
        from decodelab.vision.pipeline import ImageGenerationPipeline

        pipe = ImageGenerationPipeline(pipe.model, pipe.tokenizer, pipe.text_encoder, pipe.defaults, pipe.info,
                                       drafter=str(chosen["drafter"]), upsampler=pipe.upsampler)  # fmt: skip
    up = chosen.get("upsampler")
    return {**pipe.decoder_models(dec, up), "record": pipe.components(dec, up)}


def _conditions(pipe, args: argparse.Namespace) -> list:
    """The classes or prompts of the benchmark, cycled to ``--num-images``."""
    if pipe.condition_kind == "class":
        items = args.class_id or list(range(pipe.num_classes))
    else:
        items = args.prompt or pipe.info.get("bench_prompts") or ["a photo of a red circle"]
    return [items[i % len(items)] for i in range(args.num_images)]


def _run_pairs(args: argparse.Namespace) -> int:
    """``--pairs``: (model, decoder) pairs on the same classes / prompts and seeds, in one interleaved run."""
    import torch

    from decodelab.config import write_json
    from decodelab.vision.bench import benchmark_runs, format_table
    from decodelab.vision.pipeline import load_pipeline

    pipes: dict[str, object] = {}
    runs: dict[str, dict] = {}
    labels: list = []
    items = [x.strip() for x in args.pairs.split(",")]
    if args.drafter is not None:  # one drafter fits one target: the model of the drafter decoders
        from decodelab.speculative.base import create_decoder

        drafting = set()
        for item in items:
            model_name, _, dec_text = item.partition(":")
            name, *opts = dec_text.split(":")
            if name and create_decoder(name).requires:
                drafting.add(model_name)
        if len(drafting) > 1:
            raise ValueError(f"--drafter names one drafter but drafter decoders run on {sorted(drafting)}: omit it "
                             "(each model's default drafter) or give drafter=DIR in each item")  # fmt: skip
    for item in items:
        model_name, _, dec_text = item.partition(":")
        if not item or not model_name or not dec_text:
            raise ValueError(f"--pairs items look like MODEL:DECODER[:key=value...], got {item!r}")
        if model_name not in pipes:
            pipes[model_name] = load_pipeline(model_name, upsampler=args.upsampler)
            if args.drafter is not None and model_name in drafting:
                pipes[model_name].set_drafter(args.drafter)
        pipe = pipes[model_name]
        items = _conditions(pipe, args)
        if not labels:
            labels = items
        elif items != labels:
            raise ValueError(
                f"{model_name} takes other conditions than the first model ({pipe.condition_kind}); --pairs compares "
                "models of one world: give --class-id / --prompt explicitly if their defaults differ"
            )
        name, *opts = dec_text.split(":")
        conds, mask = pipe.encode_conditions(items)
        sampling = pipe.sampling_config(
            cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
        )
        spec = {"name": name, **parse_decoder_args(opts)}
        runs[item] = {"model": pipe.model, "spec": spec, "conds": conds, "cond_mask": mask, "sampling": sampling,
                      **run_components(pipe, spec)}  # fmt: skip
    reference = next((k for k, r in runs.items() if r["spec"]["name"] == "ar"), next(iter(runs)))
    first = next(iter(runs.values()))
    report = benchmark_runs(runs, reference, sampling=first["sampling"], seed=args.seed, batch_size=args.batch_size,
                            repeats=args.repeats)  # fmt: skip
    report["pairs"] = list(runs)
    report["threads"] = torch.get_num_threads()
    print(format_table(report))
    if args.json:
        clean = {**report, "decoders": {k: {kk: vv for kk, vv in v.items() if kk != "tokens"}
                                        for k, v in report["decoders"].items()}}  # fmt: skip
        write_json(args.json, clean)
        print(f"wrote {args.json}")
    return 0
