"""``decodelab <command>``: one console script; each subcommand is a thin module.

Commands: ``generate``, ``models``, ``decoders``, ``bench decode``, ``eval``, ``demo``, ``train``,
``sample``, ``derain``, ``upscale``, ``reconstruct``, ``neuro``.

Errors a user can fix (a bad argument, a missing or unreadable file, an unwritable output) end in
one line on stderr, ``decodelab <command>: error: <what to do>``, and exit code 2. ``--debug`` (or
the environment variable ``DECODELAB_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

__all__ = ["COMMANDS", "build_parser", "error_line", "main", "torch_device"]

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
    "neuro": "decodelab.cli.neuro",
}

#: Exceptions that mean "the user can fix this": reported as one line (exit code 2) unless --debug.
#: ``OSError`` covers missing, unreadable and unwritable files (``FileNotFoundError``,
#: ``FileExistsError``, ``PermissionError``, PIL's ``UnidentifiedImageError``, a full disk).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decodelab",
        description="decodelab: decode images from tokens with AR, Jacobi and speculative decoders.",
        epilog="Set DECODELAB_DEBUG=1 (or pass --debug) to see the traceback of an error.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in dict.fromkeys(COMMANDS.values()):  # each module once, in order
        mod = importlib.import_module(module)
        if hasattr(mod, "add_parsers"):
            mod.add_parsers(sub)
        else:
            mod.add_parser(sub)
    return parser


def error_line(e: BaseException) -> str:
    """One line that says what went wrong: the exception's message with its line breaks folded."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"{e.strerror}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    else:
        text = str(e) or type(e).__name__
    if isinstance(e, KeyError):  # str(KeyError) is the quoted key
        text = f"missing key {text}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    out = ""
    for line in lines:
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def _debug_env() -> bool:
    return os.environ.get("DECODELAB_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def torch_device(name: str) -> Any:
    """``--device NAME`` as a ``torch.device`` that exists on this machine.

    Raises:
        ValueError: for a name torch does not know, or a CUDA / MPS device that is not available.
    """
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (no GPU, or a CPU-only torch); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    return dev


def main(argv: list[str] | None = None) -> int:
    """Run ``decodelab`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if args.debug or _debug_env():
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        command = " ".join(str(c) for c in (args.command, getattr(args, f"{args.command}_command", None)) if c)
        print(f"decodelab {command}: error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
