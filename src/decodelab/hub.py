"""Checkpoint IO: the native format, upstream importers and offline-first resolution.

Native format (diffusers' convention): a directory holding ``config.json`` (the architecture's
class name and its constructor keyword arguments) and ``model.safetensors``. Upstream ``.pt``
checkpoints are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and checked
key by key against the model they are loaded into.

Resolution never downloads implicitly: a local path is used as is; a Hugging Face hub id is
looked up in the local cache (``local_files_only=True`` by default) and only downloaded when the
caller passes ``local_files_only=False`` explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from decodelab.registry import ARCHITECTURES

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Upstream checkpoints wrap the state dict under one of these keys (DDP, DeepSpeed, Lightning-style).
WRAPPER_KEYS = ("model", "module", "state_dict", "ema")
# config.json entry declaring the floating dtype the weights are stored in (when not float32).
WEIGHTS_DTYPE_KEY = "weights_dtype"


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"torch.float16"`` / ``torch.float16`` -> ``torch.dtype``.

    Raises:
        ValueError: for a name that is not a torch dtype.
    """
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype (e.g. float32, bfloat16, float16)")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def default_cache_dir() -> Path:
    """``$DECODELAB_CACHE`` or ``~/.cache/decodelab`` (never inside the installed package)."""
    env = os.environ.get("DECODELAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decodelab"


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes do not match the model."""


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for modules whose ``__init__`` uses ``register_to_config``."""

    config: dict[str, Any]

    def save_pretrained(
        self,
        directory: str | Path,
        extra: Mapping[str, Any] | None = None,
        *,
        weights_dtype: str | torch.dtype | None = None,
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        Args:
            directory: the checkpoint folder.
            extra: more top-level ``config.json`` entries.
            weights_dtype: store the floating-point tensors in this dtype (``"bfloat16"``,
                ``"float16"``, ...). ``config.json`` then declares it as ``"weights_dtype"``, which
                :func:`load_pretrained` needs before it casts the weights to the model's dtype.
                Without it the tensors are stored as they are, and a uniform floating dtype other
                than float32 is declared the same way.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = {"architecture": type(self).__name__, "config": self.config}
        if extra:
            cfg.update(extra)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        if weights_dtype is not None:
            dtype = parse_dtype(weights_dtype)
            if not dtype.is_floating_point:
                raise ValueError(f"weights_dtype must be a floating dtype (bfloat16, float16...), not {weights_dtype}")
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        stored = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(stored) == 1 and stored != {torch.float32}:
            cfg[WEIGHTS_DTYPE_KEY] = dtype_name(stored.pop())
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, directory / WEIGHTS_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> Any:
        """Load a native checkpoint (local directory or cached hub id); see :func:`load_pretrained`."""
        model = load_pretrained(name_or_path, **kwargs)
        if not isinstance(model, cls):
            raise ValueError(f"{name_or_path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def resolve_checkpoint_dir(
    name_or_path: str | Path,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool = True,
    revision: str | None = None,
) -> Path:
    """Find the directory holding a native checkpoint.

    Order: an existing local path; ``<cache_dir>/<name>``; a Hugging Face hub id in the local hub
    cache (or downloaded, only when ``local_files_only=False``).

    Raises:
        FileNotFoundError: naming what was looked for and how to get it.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt") or path.is_file():
        raise FileNotFoundError(
            f"{path} is a single file, not a native checkpoint directory; upstream .pt files are read "
            "with the model's importer (e.g. decodelab.vision.models.gpt.import_llamagen_gpt) or with "
            "decodelab.hub.read_torch_checkpoint + decodelab.hub.load_state_dict_strict"
        )
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if (cache / str(name_or_path) / CONFIG_NAME).is_file():
        return cache / str(name_or_path)
    name = str(name_or_path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import LocalEntryNotFoundError
        except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
            raise FileNotFoundError(f"{name}: huggingface_hub is not installed") from None
        try:
            return Path(
                snapshot_download(
                    name,
                    revision=revision,
                    cache_dir=str(cache / "hub") if cache_dir else None,
                    local_files_only=local_files_only,
                    allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                )
            )
        except LocalEntryNotFoundError:
            raise FileNotFoundError(
                f"checkpoint {name!r} ({CONFIG_NAME} + {WEIGHTS_NAME}) is not in the local Hugging Face cache "
                "and decodelab does not download implicitly. Download it where you have network "
                f"(`huggingface-cli download {name}`), copy it here and pass its directory, or pass "
                "local_files_only=False to allow a download."
            ) from None
        except Exception as e:  # network failures, missing repos
            raise FileNotFoundError(f"could not fetch checkpoint {name!r} from the hub: {e}") from e
    raise FileNotFoundError(
        f"no checkpoint found for {name!r}: not a local directory, not in the cache {cache}, and not a "
        "hub id of the form 'org/name'. Pass the directory that holds config.json and model.safetensors."
    )


def read_config(directory: str | Path) -> dict[str, Any]:
    cfg_path = Path(directory) / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"missing {cfg_path}: a native checkpoint needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt {cfg_path}: {e}") from e
    if not isinstance(cfg, dict) or "architecture" not in cfg or "config" not in cfg:
        raise ValueError(f"{cfg_path} must hold 'architecture' and 'config' keys")
    if not isinstance(cfg["config"], dict):
        raise ValueError(f"{cfg_path}: 'config' must be a mapping of constructor arguments")
    return cfg


def load_pretrained(
    name_or_path: str | Path,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool = True,
    map_location: str | torch.device = "cpu",
    **overrides: Any,
) -> Any:
    """Rebuild the module saved with ``save_pretrained`` and load its weights strictly.

    ``overrides`` replace constructor arguments that do not change parameter shapes (e.g. dropout).
    """
    directory = resolve_checkpoint_dir(name_or_path, cache_dir=cache_dir, local_files_only=local_files_only)
    cfg = read_config(directory)
    cls = ARCHITECTURES.get(cfg["architecture"]).fn
    try:
        model = cls(**{**cfg["config"], **overrides})
    except TypeError as e:  # a config.json whose arguments do not fit the architecture
        raise ValueError(f"{directory / CONFIG_NAME} does not fit {cfg['architecture']}: {e}") from e
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"missing {weights}")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"corrupt weights file {weights}: {e}") from e
    _check_float_dtypes(model, state, cfg.get(WEIGHTS_DTYPE_KEY), weights)
    load_state_dict_strict(model, state, source=str(weights))
    model.eval()
    return model


def _check_float_dtypes(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], declared: Any, weights: Path
) -> None:
    """Refuse floating tensors whose dtype differs from the model's unless ``config.json`` declares it.

    Tensors stored in the declared dtype (``"weights_dtype": "bfloat16"``) are cast to the model's
    dtype by ``load_state_dict``, and a warning says so.
    """
    own = model.state_dict()
    differ: dict[tuple[torch.dtype, torch.dtype], list[str]] = {}
    for k, v in state.items():
        k = k.removeprefix("_orig_mod.")
        if k in own and v.is_floating_point() and own[k].is_floating_point() and v.dtype != own[k].dtype:
            differ.setdefault((v.dtype, own[k].dtype), []).append(k)
    declared_dtype = parse_dtype(declared) if declared is not None else None
    cfg_path = weights.parent / CONFIG_NAME
    for (stored, wanted), keys in differ.items():
        if stored == declared_dtype:
            continue
        name = dtype_name(stored)
        shown = ", ".join(sorted(keys)[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
        raise CheckpointMismatchError(
            f"{weights} stores {name} weights where {type(model).__name__} expects {dtype_name(wanted)} ({shown}), "
            f"and {cfg_path} does not declare that dtype; if {name} storage is intended, add "
            f'"{WEIGHTS_DTYPE_KEY}": "{name}" to it (save_pretrained(..., weights_dtype="{name}") writes it) and '
            "the weights are cast on loading"
        )
    import warnings

    for (stored, wanted), keys in differ.items():
        warnings.warn(
            f"{weights}: casting {len(keys)} tensor(s) from the declared {dtype_name(stored)} to the model's "
            f"{dtype_name(wanted)}",
            stacklevel=3,
        )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def refuse_code_archive(path: str | Path, names: Iterable[str] | None = None) -> None:
    """Raise ``ValueError`` when ``path`` is a zip archive that carries code (TorchScript, ``.py`` files).

    ``torch.jit.load`` runs an archive's code (``__setstate__`` and friends) while loading it, so no
    decodelab loader ever hands such a file to torch; this check runs before any reading.
    ``names`` is the archive's member list when the caller has already opened it.
    """
    path = Path(path)
    if names is None:
        if not zipfile.is_zipfile(path):
            return
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"corrupt checkpoint archive {path}: {e}") from e
    code = [n for n in names if "/code/" in n or n.endswith(("/constants.pkl", ".py", ".pyc"))]
    if code:
        raise ValueError(
            f"{path} is a TorchScript (or code-carrying) archive ({code[0]}); decodelab never loads code from a "
            "checkpoint. Save the weights with torch.save(model.state_dict(), path) and pass that file."
        )


def read_torch_checkpoint(path: str | Path, weights: str | None = None) -> dict[str, torch.Tensor]:
    """Read an upstream ``.pt`` file safely and unwrap ``model``/``module``/``state_dict``/``ema`` wrappers.

    Args:
        path: the file.
        weights: which weights of a training checkpoint that holds more than one set (LlamaGen's
            ``{"model": ..., "ema": ..., "optimizer": ..., "steps": ..., "args": ...}``):

            - ``None``: the first wrapper found, in the order ``model``, ``module``, ``state_dict``,
              ``ema`` (a bare state dict is returned as is);
            - ``"model"``: the trained weights (``model`` / ``module`` / ``state_dict`` wrapper or a
              bare state dict), never the ``ema`` copy;
            - ``"ema"``: the ``ema`` entry (the exponential moving average of the weights).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a file that is not a weights-only state dict, an unknown ``weights``, or
            ``weights="ema"`` on a file without an ``ema`` entry (and ``"model"`` on one that holds
            only ``ema``).
    """
    if weights not in (None, "model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema' (or None for the first wrapper found), got {weights!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    refuse_code_archive(path)
    # Upstream training scripts (LlamaGen's train_c2i.py) store their ``argparse.Namespace`` beside
    # the weights; it is plain data, so it is allowed alongside the weights-only types.
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        with safe([argparse.Namespace]) if safe else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read {path} as a weights-only torch checkpoint: {e}") from e
    top = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
    if weights == "ema":
        if not isinstance(obj, Mapping) or not isinstance(obj.get("ema"), Mapping):
            raise ValueError(
                f"{path} holds no EMA weights (no 'ema' entry; top-level keys: {top}); load its trained weights "
                "with weights='model'"
            )
        obj = obj["ema"]
    wrappers = WRAPPER_KEYS if weights is None else tuple(k for k in WRAPPER_KEYS if k != "ema")
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            key = next((k for k in wrappers if k in obj and isinstance(obj[k], Mapping)), None)
            if key is None and weights == "model" and isinstance(obj.get("ema"), Mapping):
                raise ValueError(f"{path} holds only EMA weights (top-level keys: {top}); pass weights='ema'")
            if key is None:
                raise ValueError(f"{path}: no state dict found (top-level keys: {sorted(obj)[:10]})")
            obj = obj[key]
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def _dtype_kind(dtype: torch.dtype) -> str:
    """``float``, ``complex``, ``bool`` or ``int``: loading across kinds would cast silently."""
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "int"


def _is_state_dict(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_state_dict_strict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "state dict",
    ignore: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model``, failing with every missing/unexpected/mis-shaped key named.

    A tensor whose dtype kind differs from the model's (integer or bool where the model holds
    floating point, or the reverse) is a mismatch too: loading it would cast silently. Floating
    tensors of another width (float16 into float32) are cast; :func:`load_pretrained` refuses
    those unless ``config.json`` declares the stored dtype.

    ``ignore`` lists key prefixes that may be present in ``state`` without a model counterpart
    (non-persistent caches such as ``freqs_cis``).
    """
    ignore = tuple(ignore)
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    kinds = sorted(
        f"{k}: checkpoint {dtype_name(state[k].dtype)} vs model {dtype_name(own[k].dtype)}"
        for k in set(own) & set(state)
        if _dtype_kind(state[k].dtype) != _dtype_kind(own[k].dtype)
    )
    if missing or unexpected or shapes or kinds:
        parts = [f"checkpoint {source} does not match {type(model).__name__}:"]
        checks = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes),
                  ("integer/floating-point dtype mismatches", kinds))  # fmt: skip
        for label, keys in checks:
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointMismatchError("\n  ".join(parts))
    model.load_state_dict(dict(state), strict=True)
