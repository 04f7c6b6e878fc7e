"""Offline resolution of a transformers checkpoint directory for the adapters (never downloads)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["resolve_weights"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def resolve_weights(weights: str | Path | None, hub_id: str, extra_files: tuple[str, ...] = ()) -> Path:
    """The local directory of a transformers checkpoint.

    ``weights`` is a local directory, or ``None`` to look the hub id up in the local Hugging Face
    cache with ``local_files_only=True``. Nothing is ever downloaded.

    Raises:
        FileNotFoundError: naming the hub id, the directory looked at and the files it needs.
    """
    needed = ("config.json", "model.safetensors (or model.safetensors.index.json + shards)", *extra_files)
    how = (
        f"download {hub_id!r} on a connected machine (e.g. `huggingface-cli download {hub_id} --local-dir DIR`) "
        f"and pass weights=DIR (CLI: --weights DIR); the directory needs: {', '.join(needed)}"
    )
    if weights is None:
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import LocalEntryNotFoundError
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            raise FileNotFoundError(f"{hub_id} is not available offline: {how}") from None
        try:
            path = Path(snapshot_download(hub_id, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise FileNotFoundError(f"{hub_id} is not in the local Hugging Face cache: {how}") from None
    else:
        path = Path(weights).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"weights directory {path} does not exist: {how}")
    missing = [f for f in ("config.json", *extra_files) if not (path / f).is_file()]
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)} for {hub_id}: {how}")
    return path
