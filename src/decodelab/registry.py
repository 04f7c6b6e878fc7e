"""One generic registry for models, decoders, datasets and metrics.

Entries are registered with a decorator as an import side effect (timm's pattern) and created by
name through :meth:`Registry.create`, which drops keyword arguments whose value is ``None`` so
that optional settings can be forwarded blindly from a CLI or config. Each entry records the module
that registered it (:attr:`Entry.module`), so a name leads to its file in one hop.

Names follow one style: lower-case ``snake_case`` (``llamagen_gpt_b``, ``sjd_coupled``,
``fmnist_c2i``). Lookups also accept the hyphenated spelling used for directories and hub ids
(``fmnist-c2i``): the two spell the same name.

Example:
    >>> from decodelab.registry import MODELS
    >>> @MODELS.register("my_model", kind="generator")
    ... def my_model(**kwargs): ...
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Entry:
    """A registered factory and its metadata."""

    name: str
    fn: Callable[..., Any]
    kind: str = ""
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        """The module that registered the entry (``decodelab.speculative.sjd`` for ``sjd``)."""
        return str(getattr(self.fn, "__module__", "") or "")


_NAME = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")


def canonical_name(name: str) -> str:
    """The registered spelling of ``name``: hyphens read as underscores (``fmnist-c2i`` -> ``fmnist_c2i``)."""
    return name.replace("-", "_")


class Registry:
    """A named table of factories.

    Args:
        what: what the registry holds ("model", "decoder", ...), used in error messages.
        class_names: entries are Python classes named by their class name (``GPT``, ``MCWNet``), as
            ``config.json`` files store them; such names are taken as they are.
    """

    def __init__(self, what: str, class_names: bool = False) -> None:
        self.what = what
        self.class_names = class_names
        self._entries: dict[str, Entry] = {}

    def _key(self, name: str) -> str:
        return name if self.class_names else canonical_name(name)

    def register(
        self, name: str | None = None, *, kind: str = "", description: str = "", **meta: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``fn`` under ``name`` (default: the function's ``__name__``), in snake_case."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = self._key(name or fn.__name__)
            if not (key.isidentifier() if self.class_names else _NAME.match(key)):
                raise ValueError(
                    f"invalid {self.what} name {key!r}: registered names are lower-case snake_case "
                    "(letters, digits, single underscores)"
                )
            if key in self._entries and self._entries[key].fn is not fn:
                raise ValueError(f"{self.what} {key!r} is already registered")
            doc = description or (fn.__doc__ or "").strip().split("\n")[0]
            self._entries[key] = Entry(key, fn, kind, doc, dict(meta))
            return fn

        return deco

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def get(self, name: str) -> Entry:
        """Return the entry for ``name`` (either spelling); an unknown name raises a ``ValueError`` with suggestions."""
        try:
            return self._entries[self._key(name)]
        except KeyError:
            close = difflib.get_close_matches(self._key(name), list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown {self.what} {name!r}.{hint} Registered {self.what}s: "
                f"{', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the entry ``name`` with ``kwargs`` (``None`` values are dropped)."""
        entry = self.get(name)
        return entry.fn(**{k: v for k, v in kwargs.items() if v is not None})

    def list(self, pattern: str = "*", kind: str | None = None) -> list[str]:
        """Sorted names matching the shell-style ``pattern`` (and ``kind`` when given)."""
        pattern = self._key(pattern)
        return sorted(
            n for n, e in self._entries.items() if fnmatch.fnmatch(n, pattern) and (kind is None or e.kind == kind)
        )

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in sorted(self._entries)]


MODELS = Registry("model")
DECODERS = Registry("decoder")
DATASETS = Registry("dataset")
METRICS = Registry("metric")
# Feature networks of the FID family (decodelab.eval.features).
EXTRACTORS = Registry("extractor")
# Classes that ``hub.from_pretrained`` may instantiate from a ``config.json`` (never arbitrary imports).
ARCHITECTURES = Registry("architecture", class_names=True)

register_model = MODELS.register
register_decoder = DECODERS.register
register_dataset = DATASETS.register
register_metric = METRICS.register


def register_architecture(cls: type) -> type:
    """Class decorator: allow ``cls`` to be rebuilt from a saved ``config.json``."""
    ARCHITECTURES.register(cls.__name__)(cls)
    return cls


# Named, ready-to-use pipelines (the shipped embedded defaults and tiny random test pipelines).
PIPELINES = Registry("pipeline")
register_pipeline = PIPELINES.register
