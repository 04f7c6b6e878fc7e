"""``decodelab models`` and ``decodelab decoders``: list what is registered."""

from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list registered models and pipelines")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'llamagen_*'")
    p.add_argument("--kind", default=None, help="generator | tokenizer")
    p.set_defaults(func=run_models)
    d = sub.add_parser("decoders", help="list registered image-token decoders")
    d.set_defaults(func=run_decoders)


def run_models(args: argparse.Namespace) -> int:
    import decodelab
    from decodelab.registry import MODELS, PIPELINES

    print("pipelines (decodelab generate --model NAME):")
    for e in PIPELINES.entries():
        print(f"  {e.name:24s} {e.description}")
    print("models (decodelab.create_model(NAME)):")
    for name in decodelab.list_models(args.pattern, args.kind):
        e = MODELS.get(name)
        print(f"  {name:24s} [{e.kind}] {e.description}  ({e.module})")
    return 0


def run_decoders(args: argparse.Namespace) -> int:
    from decodelab.registry import DECODERS
    from decodelab.speculative import create_decoder

    for e in DECODERS.entries():
        dec = create_decoder(e.name)
        print(f"  {e.name:14s} [{dec.expectation}] {e.description}  ({e.module})")
    return 0
