"""Load the MCW-Net authors' ``.pth`` checkpoints into :class:`~decodelab.derain.model.MCWNet`.

The authors' ``train.py`` (github.com/yechanp/MCW-Net) saves ``{"epoch": e, "model": model}`` where
``model`` is the whole pickled ``nn.DataParallel(Net())`` object, not a state dict. Such a file
cannot be read with ``torch.load(weights_only=True)``, and unpickling it normally would import and
run code named by the file. This importer therefore reads checkpoints in two safe ways:

1. :func:`decodelab.hub.read_torch_checkpoint` (``weights_only=True``) for plain state dicts,
   possibly wrapped (``{"model": sd}``, ``{"state_dict": sd}``) and/or ``module.``-prefixed
   (``DataParallel``) — e.g. a checkpoint re-saved with ``model.state_dict()``;
2. for pickled modules, a restricted unpickler that imports nothing: every class or function the
   pickle names resolves to an inert placeholder that only records its arguments and state, except
   a short allow-list of tensor-rebuilding functions, ``OrderedDict`` and dtypes. The module tree
   is then walked (``_modules`` / ``_parameters`` / ``_buffers``) to recover the state dict. No
   code from the file runs.

Keys are matched strictly against the model (:func:`decodelab.hub.load_state_dict_strict`): any
missing, unexpected or mis-shaped key is an error that names the keys (e.g. a large-model checkpoint
loaded into the small model).

Example:
    >>> from decodelab.derain.importer import import_mcwnet
    >>> model = import_mcwnet("RAIN100H_MCW_small.pth", "mcwnet_small")  # doctest: +SKIP
    >>> model.save_pretrained("mcwnet-small-rain200h")  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from decodelab.hub import CheckpointMismatchError, load_state_dict_strict, read_torch_checkpoint, refuse_code_archive
from decodelab.registry import MODELS

__all__ = ["import_mcwnet", "read_mcwnet_state_dict", "to_upstream_state_dict"]

# Upstream wrappers around the model: DataParallel's ``module.`` and torch.compile's ``_orig_mod.``.
_PREFIXES = ("module.", "_orig_mod.")
# The only real callables a pickled-module checkpoint may reach; everything else becomes a placeholder.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): getattr(torch._utils, "_rebuild_parameter_with_state", None),
    ("torch", "Size"): torch.Size,
}


class _Placeholder:
    """Inert stand-in for a class or function named by a pickle (records arguments and state only)."""

    qualname = "?"
    args: tuple[Any, ...] = ()
    state: Any = None  # class defaults: NEWOBJ creates instances without calling __init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        fn = _ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (_Placeholder,), {"qualname": f"{module}.{name}"})


def _module_state(obj: Any) -> dict[str, Any] | None:
    """The ``__dict__`` of a pickled ``nn.Module`` placeholder (``None`` for anything else)."""
    if isinstance(obj, _Placeholder) and isinstance(obj.state, Mapping) and "_parameters" in obj.state:
        return dict(obj.state)
    return None


def _walk(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = _module_state(obj)
    if state is None:
        return
    for name, p in dict(state.get("_parameters") or {}).items():
        if isinstance(p, torch.Tensor):
            out[prefix + name] = p.detach()
    names = state.get("_non_persistent_buffers_set")
    skip = set(names) if isinstance(names, (set, frozenset, list, tuple)) else set()
    for name, b in dict(state.get("_buffers") or {}).items():
        if isinstance(b, torch.Tensor) and name not in skip:
            out[prefix + name] = b.detach()
    for name, child in dict(state.get("_modules") or {}).items():
        _walk(child, f"{prefix}{name}.", out)


# dtype of each legacy typed-storage class name a pickle may name (``torch.FloatStorage`` ...).
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}  # fmt: skip
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageUnpickler(_RestrictedUnpickler):
    """The restricted unpickler plus ``persistent_load``: a storage record becomes bytes read by us.

    ``read(key, dtype, numel)`` returns the raw bytes of one storage; nothing the file names is run.
    """

    def __init__(self, file: Any, read: Any) -> None:
        super().__init__(file)
        self._read = read
        self._storages: dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]!r}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (pre-1.0 torch.save files) are not supported")
        dtype = getattr(storage_type, "dtype", None)  # torch.UntypedStorage resolved by name below
        if not isinstance(dtype, torch.dtype):
            dtype = _STORAGE_DTYPES.get(getattr(storage_type, "qualname", "").rsplit(".", 1)[-1])
        if dtype is None or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"unsupported storage record {str(pid)[:80]!r}")
        if key not in self._storages:
            data = self._read(key, dtype, numel)
            flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            self._storages[key] = torch.storage.TypedStorage(
                wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True
            )
        return self._storages[key]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _load_zip_checkpoint(path: Path) -> Any:
    """Unpickle a ``torch.save`` zip archive by reading its records ourselves (no ``torch.load``)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        refuse_code_archive(path, names)
        if len(pkl) != 1:
            raise ValueError(f"{path} is a zip file but not a torch checkpoint (no single */data.pkl record)")
        root = pkl[0][: -len("data.pkl")]

        def read(key: str, dtype: torch.dtype, numel: int) -> bytes:
            try:
                data = zf.read(f"{root}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage record data/{key} is missing") from None
            if len(data) < numel * _element_size(dtype):
                raise pickle.UnpicklingError(f"storage record data/{key} is truncated")
            return data[: numel * _element_size(dtype)]

        with zf.open(pkl[0]) as f:
            return _StorageUnpickler(f, read).load()


def _load_legacy_checkpoint(path: Path) -> Any:
    """Unpickle a pre-1.6 ``torch.save`` file (pickles, then raw storages), running no code from it."""
    with open(path, "rb") as f:
        if _RestrictedUnpickler(f).load() != _LEGACY_MAGIC:
            raise ValueError(f"{path} is not a torch checkpoint (no torch.save magic number)")
        _RestrictedUnpickler(f).load()  # protocol version
        _RestrictedUnpickler(f).load()  # sys info
        records: dict[str, tuple[torch.dtype, int]] = {}

        def defer(key: str, dtype: torch.dtype, numel: int) -> bytes:
            records[key] = (dtype, numel)
            return bytes(numel * _element_size(dtype))  # filled below, once the data section is reached

        unpickler = _StorageUnpickler(f, defer)
        obj = unpickler.load()
        keys = _RestrictedUnpickler(f).load()
        if not isinstance(keys, list):
            raise ValueError(f"{path}: malformed legacy checkpoint (no storage key list)")
        for key in keys:
            dtype, numel = records[str(key)]
            (count,) = struct.unpack("<q", f.read(8))
            nbytes = count * _element_size(dtype)
            data = f.read(nbytes)
            if count != numel or len(data) != nbytes:
                raise ValueError(f"{path}: storage {key} is truncated or inconsistent")
            storage = unpickler._storages[str(key)]
            storage._untyped_storage.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage())
    return obj


def _state_from_pickled_module(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = _load_zip_checkpoint(path) if zipfile.is_zipfile(path) else _load_legacy_checkpoint(path)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"could not read {path} as a torch checkpoint: {e}") from e
    candidates = [obj]
    if isinstance(obj, Mapping):
        candidates += [obj[k] for k in ("model", "module", "net", "state_dict") if k in obj]
    for cand in candidates:
        state: dict[str, torch.Tensor] = {}
        _walk(cand, "", state)
        if state:
            return state
        if isinstance(cand, Mapping) and cand and all(isinstance(v, torch.Tensor) for v in cand.values()):
            return {str(k): v for k, v in cand.items()}
    raise ValueError(
        f"{path} holds neither a state dict nor a pickled nn.Module (top level: {type(obj).__name__}); "
        "expected an MCW-Net checkpoint as saved by the authors' train.py ({'epoch', 'model'})"
    )


def read_mcwnet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an MCW-Net checkpoint in the upstream key layout, with wrapper prefixes removed.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file holds no recognisable weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MCW-Net checkpoint not found: {path}. The authors' weights are linked from "
            "github.com/yechanp/MCW-Net; download them where you have network and pass the local .pth file."
        )
    try:
        state = read_torch_checkpoint(path)
    except ValueError:  # a pickled nn.Module (the authors' train.py format): restricted reading
        state = _state_from_pickled_module(path)
    for _ in range(2):
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def import_mcwnet(path: str | Path, name: str | None = "mcwnet_small", **kwargs: Any) -> torch.nn.Module:
    """Build the registered model ``name`` and load an upstream MCW-Net checkpoint into it, strictly.

    Args:
        path: the ``.pth`` file (pickled ``DataParallel`` module or a state dict).
        name: ``mcwnet_small`` or ``mcwnet_large`` (any registered MCW-Net); ``None`` infers the
            width and SE reduction from the checkpoint's shapes.
        **kwargs: constructor overrides passed to the model factory.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file cannot be read or its keys/shapes do not match ``name``
            (:class:`~decodelab.hub.CheckpointMismatchError`, naming the keys).
    """
    state = read_mcwnet_state_dict(path)
    model = MODELS.create(name, **kwargs) if name is not None else _model_for(state, path, kwargs)
    try:
        load_state_dict_strict(model, state, source=str(path))
    except CheckpointMismatchError as e:
        hint = ""
        if "conv_i.weight" in state and state["conv_i.weight"].shape[0] != model.conv_i.weight.shape[0]:
            oc = int(state["conv_i.weight"].shape[0])
            guess = {16: "'mcwnet_small' or ", 128: "'mcwnet_large' or "}.get(oc, "")
            hint = f"\n  hint: the checkpoint's base width is oc={oc}; load it with name={guess}None (inferred)"
        raise CheckpointMismatchError(f"{e}{hint}") from None
    return model.eval()


def _model_for(state: Mapping[str, torch.Tensor], path: Path | str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """An :class:`MCWNet` shaped like ``state`` (width from ``conv_i``, SE reduction from ``se_connect4``)."""
    from decodelab.derain.model import MCWNet

    try:
        oc = int(state["conv_i.weight"].shape[0])
        hidden = int(state["se_connect4.se_layer.fc.0.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"{path} does not look like an MCW-Net checkpoint (no {e.args[0]!r} key)") from None
    return MCWNet(**{"oc": oc, "se_reduction": (32 * oc) // max(hidden, 1), **kwargs})


def to_upstream_state_dict(model: torch.nn.Module, data_parallel: bool = True) -> dict[str, torch.Tensor]:
    """``model``'s state dict in the upstream layout (``module.``-prefixed as ``DataParallel`` saves it)."""
    prefix = "module." if data_parallel else ""
    return {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}
