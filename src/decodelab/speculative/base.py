"""Decoders: the base class, the per-run context and the output every decoder returns.

A decoder is registered by name (``@register_decoder("sjd")``), configured by typed keyword
arguments, and called with the models it needs (``target``; optionally ``drafter`` and an
``upsampler``, see :attr:`Decoder.requires`) and a condition batch. It returns a
:class:`DecodeOutput`: the image tokens ``[B, H, W]``, the target's forward passes (and every
model's in ``nfe_by_model``), the tokens fixed by each target forward for each row, the wall time,
and decoder-specific extras.

Decoders work in *image positions* ``0..N-1`` (raster indices of the ``H x W`` grid) and follow the
target's :class:`~decodelab.speculative.contract.GenerationOrder`; a decoder lists the orders it
can decode in :attr:`Decoder.orders` and what it promises about its output distribution in
:attr:`Decoder.expectation` (the exactness tests are parametrised over that declaration).
The model side of the contract is :mod:`decodelab.speculative.contract`.
"""

from __future__ import annotations

import inspect
import math
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from decodelab.registry import DECODERS
from decodelab.speculative.contract import GenerationOrder, SupportsRefill, TokenModel
from decodelab.speculative.sampling import SamplingConfig, cfg_mix, logits_to_probs, row_generators

__all__ = [
    "EXPECTATIONS",
    "DecodeContext",
    "DecodeOutput",
    "Decoder",
    "TokenModel",
    "create_decoder",
    "list_decoders",
]

# What a decoder promises about its output (the exactness tests check each promise):
#   reference         it *is* the reference (``ar``)
#   lossless          samples follow ``ar``'s distribution exactly
#   greedy_equals_ar  deterministic; equals greedy ``ar`` token for token
#   lossy             trades exactness for speed (relaxed acceptance, other models' proposals)
EXPECTATIONS = ("reference", "lossless", "greedy_equals_ar", "lossy")


@dataclass
class DecodeOutput:
    """What every decoder returns.

    Attributes:
        tokens: image tokens ``[B, H, W]``.
        nfe: target-model forward passes (the prefill included).
        accepted: ``[nfe, B]`` tokens fixed by each target forward in each row (0 once a row is done).
        wall_time: seconds spent in the decoder.
        decoder: registered decoder name.
        lossless: True when the output distribution equals ``ar``'s exactly.
        extras: decoder-specific details (settings, per-row nfe, ...).
        nfe_by_model: forward passes of every model the decoder ran (``{"target": nfe, ...}``).
    """

    tokens: Tensor
    nfe: int
    accepted: Tensor
    wall_time: float
    decoder: str = ""
    lossless: bool = True
    extras: dict[str, Any] = field(default_factory=dict)
    nfe_by_model: dict[str, int] = field(default_factory=dict)

    @property
    def row_nfe(self) -> Tensor:
        """Forwards each row needed to finish ``[B]`` (ragged batches finish rows early)."""
        return (self.accepted > 0).sum(0)

    @property
    def mean_accepted(self) -> float:
        """Mean tokens fixed per forward, over forwards in which a row was still active."""
        active = self.accepted > 0
        return float(self.accepted[active].float().mean()) if active.any() else 0.0

    def accepted_histogram(self) -> dict[int, int]:
        """Count of forwards (per active row) by number of tokens they fixed."""
        vals = self.accepted[self.accepted > 0]
        counts = torch.bincount(vals)
        return {int(k): int(c) for k, c in enumerate(counts) if c > 0}

    def summary(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder,
            "lossless": self.lossless,
            "nfe": self.nfe,
            "nfe_by_model": dict(self.nfe_by_model) or {"target": self.nfe},
            "mean_row_nfe": float(self.row_nfe.float().mean()),
            "mean_accepted": self.mean_accepted,
            "wall_time_s": self.wall_time,
            "accepted_histogram": self.accepted_histogram(),
        }


class DecodeContext:
    """One decoding run of one model: its caches, CFG handling, per-image generators, forward count.

    ``batch`` rows share each forward. Without ``slots`` the rows are the images; with
    ``slots`` (continuous batching) ``batch = slots`` cache rows start with images
    ``0..slots-1`` and a decoder hands a finished row the next image through
    :meth:`forward`'s ``refill``.

    A decoder that runs a second model (a drafter) gets its context from :meth:`for_model`: same
    conditions, sampling and generators, its own caches, forwards counted under its role.
    """

    def __init__(
        self,
        model: TokenModel,
        cond: Tensor,
        sampling: SamplingConfig,
        gens: list[torch.Generator],
        cond_mask: Tensor | None = None,
        slots: int | None = None,
        *,
        role: str = "target",
        models: dict[str, Any] | None = None,
        counts: dict[str, int] | None = None,
    ) -> None:
        self.model, self.sampling = model, sampling
        self.role = role
        self.models = dict(models or {role: model})  # every model handed to the decoder, by role
        self.counts = counts if counts is not None else {}  # forwards per role, shared between contexts
        self.counts.setdefault(role, 0)
        self.order: GenerationOrder = model.generation_order
        self.num_images = cond.shape[0]
        self.batch = min(slots, self.num_images) if slots else self.num_images
        self.image_gens = gens  # one per image
        self.gens = gens[: self.batch]  # one per row of the first batch
        self.all_cond, self.all_mask = cond, cond_mask
        self.num_tokens = model.num_tokens
        self.device = cond.device
        self.cfg = sampling.use_cfg
        cond, cond_mask = self._with_null(cond[: self.batch], None if cond_mask is None else cond_mask[: self.batch])
        self.cond, self.cond_mask = cond, cond_mask

    @property
    def nfe(self) -> int:
        """Forward passes of this context's model so far."""
        return self.counts[self.role]

    @property
    def grid(self) -> tuple[int, int]:
        return self.order.grid

    def for_model(self, role: str) -> DecodeContext:
        """A context for the model handed to the decoder as ``role`` (e.g. ``"drafter"``), counting its forwards."""
        model = self.models.get(role)
        if model is None:
            raise ValueError(f"this decoder run has no {role!r} model")
        return DecodeContext(
            model, self.all_cond, self.sampling, self.image_gens, self.all_mask, None, role=role,
            models=self.models, counts=self.counts,
        )  # fmt: skip

    def _with_null(self, cond: Tensor, cond_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.cfg:
            cond = torch.cat([cond, self.model.null_condition(cond)])
            if cond_mask is not None:
                # The null rows keep the caption's padding mask, as LlamaGen trains and samples them.
                cond_mask = torch.cat([cond_mask, cond_mask])
        return cond, cond_mask

    def _final(self, logits: Tensor, next_pos: Tensor) -> Tensor:
        # logits: [B or 2B, S, V]; next_pos: [B, S] image positions the distributions are for
        s = self.sampling
        if self.cfg:
            # LlamaGen guides the prefill and decode steps 0..cfg_interval: generation steps 0..cfg_interval+1
            # (image tokens 0..cfg_interval+1 in raster order)
            apply = None
            if s.cfg_interval >= 0:
                # positions past the grid (padding inputs of a window) count as the last step
                step = self.order.step_of.to(next_pos.device)[next_pos.clamp(0, self.num_tokens - 1)]
                apply = step <= s.cfg_interval + 1
            logits = cfg_mix(logits, s.cfg_scale, apply)
        return logits_to_probs(logits, s.temperature, s.top_k, s.top_p)

    def prefill(self) -> Tensor:
        """Condition forward; the final distribution ``[B, V]`` for image position 0."""
        self.model.setup_caches(self.cond.shape[0], None)
        logits = self.model.prefill(self.cond, self.cond_mask)
        self.counts[self.role] += 1
        zero = torch.zeros(self.batch, 1, dtype=torch.long, device=self.device)
        return self._final(logits[:, None], zero)[:, 0]

    def forward(
        self, tokens: Tensor, pos: Tensor, refill: dict[int, int] | None = None, query_pos: Tensor | None = None
    ) -> Tensor:
        """Forward ``tokens [B, S]`` at image positions ``pos [S] or [B, S]``.

        ``refill`` maps rows to images that start in them (continuous batching; the model must be
        :class:`~decodelab.speculative.contract.SupportsRefill`): those rows' inputs are replaced by
        the image's condition, and their entry ``T - 1`` (``T = model.num_cond_tokens``) is the
        distribution of its image token 0.

        ``query_pos`` (``[Q]`` or ``[B, Q]``) asks for the distributions of those image positions
        (see :meth:`TokenModel.decode_step`); without it entry ``s`` is for position ``pos[s] + 1``.

        Returns the final distributions ``[B, S or Q, V]``.
        """
        pos2 = pos.expand(self.batch, -1) if pos.dim() == 1 else pos
        next_pos = pos2 + 1
        if query_pos is not None:
            if refill:
                raise ValueError("refill and query_pos cannot be combined in one forward")
            next_pos = query_pos.expand(self.batch, -1) if query_pos.dim() == 1 else query_pos
        if self.cfg:
            tokens = torch.cat([tokens, tokens])
            pos = pos if pos.dim() == 1 else torch.cat([pos, pos])
            if query_pos is not None and query_pos.dim() == 2:
                query_pos = torch.cat([query_pos, query_pos])
        if refill:
            if not isinstance(self.model, SupportsRefill):
                raise ValueError(f"{type(self.model).__name__} cannot start an image inside a decode step (no refill)")
            rows = torch.tensor(sorted(refill), dtype=torch.long, device=self.device)
            images = torch.tensor([refill[r] for r in sorted(refill)], dtype=torch.long, device=self.all_cond.device)
            mask = None if self.all_mask is None else self.all_mask[images]
            cond, mask = self._with_null(self.all_cond[images], mask)
            if self.cfg:
                rows = torch.cat([rows, rows + self.batch])
            logits = self.model.refill_step(tokens, pos, rows, cond, mask)
            T = self.model.num_cond_tokens
            next_pos = next_pos.clone()
            next_pos[rows[: len(refill)]] = (torch.arange(pos2.shape[1], device=pos2.device) - (T - 1)).clamp_min(0)
        elif query_pos is None:
            logits = self.model.decode_step(tokens, pos)
        else:
            logits = self.model.decode_step(tokens, pos, query_pos)
        self.counts[self.role] += 1
        return self._final(logits, next_pos)


class Decoder:
    """Base class: subclasses implement :meth:`_decode` and declare what they need and promise.

    Class attributes a subclass sets:
        name: the registered name.
        expectation: one of :data:`EXPECTATIONS` (an instance may refine it, e.g. relaxed SJD is lossy).
        requires: the model roles ``__call__`` must be given besides ``target`` (e.g. ``("drafter",)``).
        orders: generation orders the decoder can follow (``("raster",)`` for LlamaGen-style decoding).

    A subclass whose :meth:`_decode` serves more images than rows (continuous batching through
    :meth:`DecodeContext.forward`'s ``refill``) says so in :meth:`can_refill`.
    """

    name: str = ""
    expectation: str = "lossless"
    requires: tuple[str, ...] = ()
    orders: tuple[str, ...] = ("raster",)

    @property
    def lossless(self) -> bool:
        """True when the output distribution equals ``ar``'s exactly."""
        return self.expectation in ("reference", "lossless", "greedy_equals_ar")

    def can_refill(self, model: TokenModel) -> bool:
        """True when :meth:`_decode` can refill finished rows of ``model``'s batch with the next images."""
        return False

    def settings(self) -> dict[str, Any]:
        """The decoder's keyword arguments, for records."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def check_models(self, models: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless ``models`` holds what this decoder needs, in an order it follows."""
        target = models["target"]
        missing = [r for r in self.requires if models.get(r) is None]
        if missing:
            raise ValueError(f"decoder {self.name!r} needs a {' and a '.join(missing)} model besides the target")
        extra = sorted(r for r, m in models.items() if m is not None and r != "target" and r not in self.requires)
        if extra:
            raise ValueError(f"decoder {self.name!r} does not use a {' or '.join(extra)} model")
        if not isinstance(target, TokenModel):
            raise ValueError(f"{type(target).__name__} is not a TokenModel (see decodelab.speculative.contract)")
        order = target.generation_order.name
        if order not in self.orders:
            raise ValueError(
                f"decoder {self.name!r} decodes in {' or '.join(self.orders)} order, but this model generates in "
                f"{order!r} order; pick a decoder for it (decodelab.list_decoders())"
            )

    def _decode(self, ctx: DecodeContext) -> tuple[Tensor, list[Tensor], dict[str, Any]]:
        """Return tokens ``[num_images, N]``, per-forward accepted counts (each ``[num_images]``) and extras."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(
        self,
        target: TokenModel,
        cond: Tensor,
        *,
        drafter: TokenModel | None = None,
        upsampler: Any = None,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        cond_mask: Tensor | None = None,
        max_batch: int | None = None,
    ) -> DecodeOutput:
        """Decode one image per condition.

        Args:
            target: the :class:`TokenModel` whose distribution is decoded (e.g. a GPT in eval mode).
            cond: class ids ``[M]`` or caption embeddings ``[M, T, C]``.
            drafter: a second token model proposing drafts (decoders that list it in ``requires``).
            upsampler: maps a drafter's tokens to the target's grid (decoders that list it).
            sampling: temperature / top-k / top-p / CFG settings.
            generator: one generator (per-image streams are derived from it) or one per image.
            cond_mask: optional ``[M, T]`` caption padding mask.
            max_batch: rows per forward (``None``: all ``M`` at once). A continuous
                (:meth:`can_refill`) decoder keeps ``max_batch`` rows busy and starts the next image in a row as soon
                as the row finishes; other decoders run
                ``ceil(M / max_batch)`` batches one after another. Each image's tokens depend
                only on its own generator stream, never on the batching.
        """
        models = {"target": target, "drafter": drafter, "upsampler": upsampler}
        self.check_models(models)
        models = {r: m for r, m in models.items() if m is not None}
        sampling = sampling or SamplingConfig()
        target.check_condition(cond)
        if drafter is not None:
            drafter.check_condition(cond)
        M = cond.shape[0]
        gens = row_generators(generator, M)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_batch is None or M <= max_batch:
            return self._run(models, cond, sampling, gens, cond_mask, None)
        if max_batch > 1 and self.can_refill(target):
            return self._run(models, cond, sampling, gens, cond_mask, max_batch)
        outs = [
            self._run(models, cond[s : s + max_batch], sampling, gens[s : s + max_batch],
                      None if cond_mask is None else cond_mask[s : s + max_batch], None)
            for s in range(0, M, max_batch)
        ]  # fmt: skip
        return _concat_outputs(outs, max_batch)

    def _run(
        self,
        models: dict[str, Any],
        cond: Tensor,
        sampling: SamplingConfig,
        gens: list[torch.Generator],
        cond_mask: Tensor | None,
        slots: int | None,
    ) -> DecodeOutput:
        target = models["target"]
        ctx = DecodeContext(target, cond, sampling, gens, cond_mask, slots, models=models)
        sync = torch.cuda.synchronize if cond.is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        tokens, accepted, extras = self._decode(ctx)
        sync()
        wall = time.perf_counter() - t0
        H, W = target.grid
        if slots:
            extras = {"max_batch": slots, "continuous": True, **extras}
        return DecodeOutput(
            tokens=tokens.view(-1, H, W),
            nfe=ctx.nfe,
            accepted=torch.stack([a.to(torch.long).cpu() for a in accepted]),
            wall_time=wall,
            decoder=self.name,
            lossless=self.lossless,
            extras={"settings": self.settings(), **extras},
            nfe_by_model=dict(ctx.counts),
        )


def _concat_outputs(outs: list[DecodeOutput], max_batch: int) -> DecodeOutput:
    """Batches decoded one after another as one output (``accepted`` block-diagonal)."""
    M = sum(o.tokens.shape[0] for o in outs)
    accepted = torch.zeros(sum(o.nfe for o in outs), M, dtype=torch.long)
    f = b = 0
    for o in outs:
        accepted[f : f + o.nfe, b : b + o.tokens.shape[0]] = o.accepted
        f, b = f + o.nfe, b + o.tokens.shape[0]
    first = outs[0]
    nfe_by_model: dict[str, int] = {}
    for o in outs:
        for role, n in o.nfe_by_model.items():
            nfe_by_model[role] = nfe_by_model.get(role, 0) + n
    return DecodeOutput(
        tokens=torch.cat([o.tokens for o in outs]),
        nfe=sum(o.nfe for o in outs),
        accepted=accepted,
        wall_time=sum(o.wall_time for o in outs),
        decoder=first.decoder,
        lossless=first.lossless,
        extras={**first.extras, "max_batch": max_batch, "continuous": False, "batches": len(outs)},
        nfe_by_model=nfe_by_model,
    )


def _type_hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: the arguments are then checked by the decoder alone
        return {}


def _decoder_parameters(fn: Any) -> tuple[dict[str, inspect.Parameter] | None, dict[str, Any]]:
    """The keyword parameters of a decoder factory and their type hints.

    A factory taking ``**kwargs`` that is annotated to return a :class:`Decoder` subclass (e.g.
    ``sjd_coupled -> SJDDecoder``) is checked against that class's constructor. ``None`` means
    "accepts anything".
    """
    params = dict(inspect.signature(fn).parameters)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        ret = _type_hints(fn).get("return")
        if not (isinstance(ret, type) and issubclass(ret, Decoder)):
            return None, {}
        fn = ret
        params = dict(inspect.signature(ret).parameters)
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None, {}
    hints = _type_hints(fn.__init__ if isinstance(fn, type) else fn)
    return {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}, hints


_SIMPLE_TYPES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}


def _fits(value: Any, tp: type) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return isinstance(value, tp)


def _check_argument(decoder: str, key: str, value: Any, param: inspect.Parameter, hint: Any) -> Any:
    """``value`` checked against the parameter's annotation (or its default's type); ints become floats."""
    if hint is None and param.default is not inspect.Parameter.empty and param.default is not None:
        hint = type(param.default)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        allowed = [a for a in typing.get_args(hint) if a is not type(None)]
    else:
        allowed = [hint]
    if not allowed or any(a not in _SIMPLE_TYPES for a in allowed):
        return value  # a richer annotation: the decoder checks the value itself
    if not any(_fits(value, a) for a in allowed):
        want = " or ".join(_SIMPLE_TYPES[a] for a in allowed)
        raise ValueError(f"decoder {decoder!r}: {key} must be {want}, got {value!r} ({type(value).__name__})")
    if allowed == [float]:
        return float(value)
    return value


def create_decoder(name: str, **kwargs: Any) -> Decoder:
    """Build the registered decoder ``name``.

    Every keyword argument is checked against the decoder's signature before the decoder is built:
    unknown names, and values whose type does not match the annotation (or the default's type) of
    a ``bool`` / ``int`` / ``float`` / ``str`` parameter, raise ``ValueError`` (``window=2.5`` is an
    error, not a truncation; an ``int`` given to a ``float`` parameter is converted; NaN is refused).
    """
    entry = DECODERS.get(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params, hints = _decoder_parameters(entry.fn)
    if params is not None:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(
                f"unknown argument(s) {', '.join(map(repr, unknown))} for decoder {name!r}; "
                f"valid arguments: {', '.join(params) or '(none)'}"
            )
        kwargs = {k: _check_argument(name, k, v, params[k], hints.get(k)) for k, v in kwargs.items()}
    return entry.fn(**kwargs)


def list_decoders(pattern: str = "*") -> list[str]:
    return DECODERS.list(pattern)
