"""``decodelab <command>``: one console script; each subcommand is a thin module.

Commands: ``generate``, ``models``, ``decoders``, ``bench decode``, ``eval``, ``demo``, ``train``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module exposing add_parser(subparsers) and run(args) -> int
COMMANDS = {
    "generate": "decodelab.cli.generate",
    "models": "decodelab.cli.listing",
    "decoders": "decodelab.cli.listing",
    "bench": "decodelab.cli.bench",
    "demo": "decodelab.cli.demo",
    "train": "decodelab.cli.train",
    "eval": "decodelab.cli.eval",
    "sample": "decodelab.cli.sample",
    "derain": "decodelab.cli.derain",
    "upscale": "decodelab.cli.lsr",
    "reconstruct": "decodelab.cli.lsr",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decodelab",
        description="decodelab: decode images from tokens with AR, Jacobi and speculative decoders.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in dict.fromkeys(COMMANDS.values()):  # each module once, in order
        mod = importlib.import_module(module)
        if hasattr(mod, "add_parsers"):
            mod.add_parsers(sub)
        else:
            mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"decodelab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
