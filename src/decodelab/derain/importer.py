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
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from decodelab.hub import CheckpointMismatchError, load_state_dict_strict, read_torch_checkpoint
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


# torch.load(pickle_module=...) needs a module-like object exposing ``Unpickler`` and ``load``.
_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
    __name__="decodelab_restricted_pickle",
)


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


def _state_from_pickled_module(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
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
