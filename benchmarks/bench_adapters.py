"""Decoders on the real multimodal generators: nfe, step compression and wall-clock per family.

For each adapter pipeline given local weights (Janus-Pro, Emu3-Gen, LlamaGen t2i; see
docs/adapters.md) it decodes the same prompts with the same per-image seeds with ``ar``, ``sjd`` and
``sjd_coupled`` (interleaved repeats, median wall time), at the model's published sampling
settings, and reports per decoder: forwards per image, step compression ``nfe(ar) / nfe(x)``,
wall-clock speed-up vs ``ar``, mean tokens accepted per forward. The thread count is pinned and
recorded (``--threads``). Nothing is downloaded: a model without weights is an error naming its hub id.
Only tokens are decoded, so the Chameleon-backbone models (no VQ decoder in transformers) run too.
The paper settings are configs: ``--config configs/adapters/sjd-emu3-gen.yaml`` (flags override them).

    python benchmarks/bench_adapters.py --model janus-pro-1b --weights janus-pro-1b=/ckpt/Janus-Pro-1B \\
        --device cuda --dtype bfloat16 --num-prompts 8 --repeats 3 --json benchmarks/results/adapters-janus.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

# A few COCO-style captions (the SJD paper evaluates on MS-COCO 2017 and PartiPrompts).
PROMPTS = [
    "A red double-decker bus driving down a city street.",
    "A plate of pasta with tomatoes and basil on a wooden table.",
    "A cat sleeping on a windowsill in the afternoon sun.",
    "Two people riding horses along a sandy beach at sunset.",
    "A snowy mountain behind a calm blue lake.",
    "A bowl of fresh fruit next to a glass of orange juice.",
    "An old lighthouse on a rocky coast under a cloudy sky.",
    "A little girl flying a kite in a green park.",
]


def decoder_specs(window: int, init: str) -> dict[str, dict[str, Any]]:
    """The compared decoders: the reference and the two lossless Jacobi decoders."""
    return {
        "ar": {"name": "ar"},
        f"sjd(L={window})": {"name": "sjd", "window": window, "init": init},
        f"sjd_coupled(L={window})": {"name": "sjd_coupled", "window": window, "init": init},
    }


def bench_model(
    model, conds: torch.Tensor, cond_mask: torch.Tensor | None, sampling, *, window: int = 16, init: str = "random",
    batch_size: int = 1, repeats: int = 3, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """One family's report (JSON-ready): ``ar`` / ``sjd`` / ``sjd_coupled`` on the same prompts and seeds."""
    from decodelab.vision.bench import benchmark_decoders

    report = benchmark_decoders(model, conds, decoder_specs(window, init), sampling=sampling, seed=seed,
                                batch_size=batch_size, repeats=repeats, cond_mask=cond_mask)  # fmt: skip
    for r in report["decoders"].values():
        r.pop("tokens")
    return report


def _weights(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--weights {item!r} must look like MODEL=DIR")
        out[name.replace("-", "_")] = path
    return out


def apply_config(ap: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """Fill ``args`` from the YAML file ``args.config``; options given on the command line win.

    Raises:
        ValueError: for a key that is not an option of this script.
    """
    import yaml

    data = yaml.safe_load(Path(args.config).read_text()) or {}
    known = {a.dest: a for a in ap._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{args.config}: unknown option(s) {unknown}; valid: {sorted(known)}")
    given = {opt for a in ap._actions for opt in a.option_strings if opt in argv}
    for key, value in data.items():
        action = known[key]
        if not any(opt in given for opt in action.option_strings):
            if key == "model" and isinstance(value, str):
                value = [value]
            setattr(args, key, value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="a YAML file of these options (configs/adapters/*.yaml)")
    ap.add_argument("--model", nargs="+", default=None, help="adapters, e.g. janus-pro-1b emu3-gen")
    ap.add_argument("--weights", action="append", metavar="MODEL=DIR", help="local checkpoint directory per model")
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--window", type=int, default=16, help="SJD window (the paper: 16)")
    ap.add_argument("--init", default="random", help="draft init (the paper's Lumina-mGPT / Emu3 demos: random)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is); recorded")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the checkpoint's)")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the model's published setting")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--prompt-length", type=int, default=None)
    ap.add_argument("--json", default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.config:
        apply_config(ap, args, argv or [])
    if not args.model:
        ap.error("--model (or a --config naming one) is required")
    if args.threads:
        torch.set_num_threads(args.threads)

    from decodelab.speculative import SamplingConfig
    from decodelab.vision.adapters import load_adapter
    from decodelab.vision.bench import format_table

    weights = _weights(args.weights)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.num_prompts)]
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "device": args.device, "dtype": args.dtype,
                           "prompts": prompts, "models": {}}  # fmt: skip
    for name in args.model:
        model, _, encoder, spec = load_adapter(name, weights.get(name.replace("-", "_")), dtype=args.dtype,
                                               device=args.device, prompt_length=args.prompt_length)  # fmt: skip
        conds, mask = encoder(prompts)
        given = {"cfg_scale": args.cfg_scale, "top_k": args.top_k}
        sampling = SamplingConfig(**{**spec.defaults, **{k: v for k, v in given.items() if v is not None}})
        conds, mask = conds.to(args.device), mask.to(args.device)
        report = bench_model(model, conds, mask, sampling, window=args.window, init=args.init,
                             batch_size=args.batch_size, repeats=args.repeats, seed=args.seed)  # fmt: skip
        report["grid"] = list(model.grid)
        out["models"][name] = report
        print(f"== {name}: {model.grid[0]}x{model.grid[1]} tokens, {len(prompts)} prompts, "
              f"threads={out['threads']}, sampling={vars(sampling)}")  # fmt: skip
        print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
