"""The decoder contract carries more than raster order and one model.

- :class:`GenerationOrder` (raster and next-neighbour anti-diagonals) covers every position once;
- a GPT's cached forward answers arbitrary ``query_pos``;
- a toy NAR-like model (proximity mask: causal across anti-diagonals, bidirectional inside one; two
  heads whose logits are averaged) is a :class:`TokenModel`, and a next-neighbour decoder written
  against the contract decodes it in ``H + W - 1`` forwards with exactly the full forward's logits;
- a drafter + target pair at two resolutions runs through one decoder call, with forwards counted
  per model; capabilities are protocols; decoders refuse models in an order they cannot follow.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.base import DecodeContext, Decoder
from decodelab.speculative.contract import (
    GenerationOrder,
    SupportsRefill,
    SupportsTokenEmbeddings,
    TokenModel,
    anti_diagonal_rank,
)
from decodelab.speculative.sampling import cfg_mix, logits_to_probs, sample_rows
from decodelab.vision.models.gpt import GPT


# --------------------------------------------------------------------------- orders
@pytest.mark.parametrize("grid", [(1, 1), (3, 3), (4, 2), (2, 5)])
def test_orders_cover_every_position_once(grid) -> None:
    H, W = grid
    for order, steps in ((GenerationOrder.raster(grid), H * W), (GenerationOrder.next_neighbor(grid), H + W - 1)):
        assert order.num_steps == steps and order.num_tokens == H * W
        seen = torch.cat(order.steps())
        assert sorted(seen.tolist()) == list(range(H * W))
    nn_order = GenerationOrder.next_neighbor(grid)
    for s, pos in enumerate(nn_order.steps()):
        assert all(int(p) // W + int(p) % W == s for p in pos)  # step s is the anti-diagonal i + j = s


def test_order_validation() -> None:
    with pytest.raises(ValueError, match="one entry per position"):
        GenerationOrder("x", (2, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="no empty step"):
        GenerationOrder("x", (2, 2), torch.tensor([0, 2, 2, 2]))


# --------------------------------------------------------------------------- GPT on the contract
def _gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    m = decodelab.create_model("test_gpt", **kw).eval()
    nn.init.normal_(m.output.weight, 0.0, 0.5)
    return m


def test_gpt_is_a_token_model_with_capabilities() -> None:
    m = _gpt()
    assert isinstance(m, TokenModel) and isinstance(m, SupportsRefill) and isinstance(m, SupportsTokenEmbeddings)
    assert m.grid == (4, 4) and m.generation_order.name == "raster" and m.condition_kind == "class"
    assert not isinstance(object(), TokenModel)


def test_gpt_query_pos_selects_the_predicting_rows() -> None:
    m = _gpt()
    m.setup_caches(2)
    m.prefill(torch.tensor([1, 2]))
    toks = torch.tensor([[3, 4, 5], [6, 7, 8]])
    full = m.decode_step(toks, torch.tensor([0, 1, 2]))
    m.prefill(torch.tensor([1, 2]))
    q = m.decode_step(toks, torch.tensor([0, 1, 2]), query_pos=torch.tensor([[3, 1], [2, 3]]))
    torch.testing.assert_close(q[0], full[0, [2, 0]])
    torch.testing.assert_close(q[1], full[1, [1, 2]])
    with pytest.raises(ValueError, match="predecessor"):
        m.decode_step(toks, torch.tensor([0, 1, 2]), query_pos=torch.tensor([9]))


# --------------------------------------------------------------------------- a toy NAR-like model
class ToyNAR(GPT):
    """GPT + a vertical head, proximity mask, next-neighbour order (the shape of NAR, not its weights).

    The horizontal head (the GPT's ``output``) at ``(i, j)`` predicts ``(i, j + 1)``; the vertical
    head at ``(i, j)`` predicts ``(i + 1, j)``; a position reachable from both takes the mean of the
    two logits, the ends of an anti-diagonal take the one head that reaches them.
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        T = self.num_cond_tokens
        rank = torch.cat([torch.arange(T), T + anti_diagonal_rank(self.grid)])
        self.attention_rank.copy_(rank)
        self.vertical = nn.Linear(self.tok_embeddings.embedding_dim, self.vocab_size, bias=False)

    @property
    def generation_order(self) -> GenerationOrder:
        return GenerationOrder.next_neighbor(self.grid)

    def _mix(self, hidden: Tensor, written: Tensor, query_pos: Tensor) -> Tensor:
        """Logits ``[B, Q, V]`` for ``query_pos [B, Q]`` from ``hidden [B, S, dim]`` at positions ``written [B, S]``."""
        W = self.grid[1]
        B, Q = query_pos.shape
        out = torch.zeros(B, Q, self.vocab_size)
        for b in range(B):
            where = {int(p): s for s, p in enumerate(written[b].tolist())}
            for k, q in enumerate(query_pos[b].tolist()):
                i, j = divmod(q, W)
                parts = []
                if j > 0 and i * W + j - 1 in where:
                    parts.append(self.output(hidden[b, where[i * W + j - 1]]).float())
                if i > 0 and (i - 1) * W + j in where:
                    parts.append(self.vertical(hidden[b, where[(i - 1) * W + j]]).float())
                if not parts:
                    raise ValueError(f"position {q} has no written neighbour in this forward")
                out[b, k] = torch.stack(parts).mean(0)
        return out

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, token_pos: Tensor, query_pos: Tensor | None = None) -> Tensor:
        if query_pos is None:
            raise ValueError("ToyNAR needs query_pos (the next anti-diagonal)")
        B = tokens.shape[0]
        hidden = self._hidden_cached(self.tok_embeddings(tokens), token_pos + self.num_cond_tokens)
        written = token_pos.expand(B, -1) if token_pos.dim() == 1 else token_pos
        return self._mix(hidden, written, query_pos.expand(B, -1) if query_pos.dim() == 1 else query_pos)

    @torch.no_grad()
    def full_logits(self, tokens: Tensor, cond: Tensor) -> Tensor:
        """Cache-free forward over the whole sequence with the proximity mask: logits ``[B, N, V]``."""
        T, N = self.num_cond_tokens, self.num_tokens
        h = torch.cat([self.embed_condition(cond), self.tok_embeddings(tokens)], dim=1)  # [B, T + N, dim]
        rank = self.attention_rank
        mask = (rank[None, :] <= rank[:, None])[None, None]
        for layer in self.layers:
            h = layer(h, self.freqs_cis[None, : T + N], None, mask, None)
        h = self.norm(h)
        first = self.output(h[:, T - 1]).float()[:, None]  # position 0 from the condition
        B = tokens.shape[0]
        pos = torch.arange(N).expand(B, -1)
        rest = self._mix(h[:, T:], pos, torch.arange(1, N).expand(B, -1))
        return torch.cat([first, rest], dim=1)


class NextNeighborToyDecoder(Decoder):
    """A next-neighbour decoder written only against the contract: one anti-diagonal per forward."""

    name = "toy_next_neighbor"
    expectation = "lossy"
    orders = ("next_neighbor",)

    def _decode(self, ctx: DecodeContext):
        order, B = ctx.order, ctx.batch
        tokens = torch.zeros(B, order.num_tokens, dtype=torch.long)
        steps = order.steps()
        tokens[:, steps[0]] = sample_rows(ctx.prefill(), ctx.gens)[:, None]
        accepted = [torch.full((B,), len(steps[0]))]
        for s in range(1, len(steps)):
            prev, cur = steps[s - 1], steps[s]
            probs = ctx.forward(tokens[:, prev], prev, query_pos=cur)  # [B, |cur|, V]
            for k, p in enumerate(cur.tolist()):
                tokens[:, p] = sample_rows(probs[:, k], ctx.gens)
            accepted.append(torch.full((B,), len(cur)))
        return tokens, accepted, {}


def _toy(seed: int = 0) -> ToyNAR:
    torch.manual_seed(seed)
    m = ToyNAR(dim=32, n_layer=2, n_head=4, multiple_of=16, vocab_size=16, block_size=16, num_classes=10).eval()
    nn.init.normal_(m.output.weight, 0.0, 0.5)
    nn.init.normal_(m.vertical.weight, 0.0, 0.5)
    return m


def test_toy_nar_is_a_token_model_in_next_neighbor_order() -> None:
    m = _toy()
    assert isinstance(m, TokenModel) and m.generation_order.name == "next_neighbor"
    T = m.num_cond_tokens
    r = m.attention_rank[T:].view(4, 4)
    assert r[0, 1] == r[1, 0] and r[1, 1] == r[0, 2] and r[0, 1] < r[1, 1]  # same anti-diagonal, same rank


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_next_neighbor_decoding_matches_the_full_forward(cfg_scale: float) -> None:
    m = _toy(1)
    cond = torch.tensor([3, 7])
    s = SamplingConfig(temperature=1.0, cfg_scale=cfg_scale)
    out = NextNeighborToyDecoder()(m, cond, sampling=s, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 4 + 4 - 1 and out.nfe_by_model == {"target": 7}  # prefill + one forward per anti-diagonal
    assert out.accepted.tolist() == [[1, 1], [2, 2], [3, 3], [4, 4], [3, 3], [2, 2], [1, 1]]
    toks = out.tokens.view(2, -1)
    # the step-by-step cached distributions equal the full proximity-mask forward's on the decoded tokens
    full = m.full_logits(toks, cond)
    if cfg_scale != 1.0:
        full = cfg_mix(torch.cat([full, m.full_logits(toks, m.null_condition(cond))]), cfg_scale)
    want = logits_to_probs(full, 1.0, 0, 1.0)
    gens = [torch.Generator().manual_seed(0)]
    ctx = DecodeContext(m, cond, s, gens * 2)
    got = torch.zeros_like(want)
    got[:, 0] = ctx.prefill()
    steps = m.generation_order.steps()
    for i in range(1, len(steps)):
        got[:, steps[i]] = ctx.forward(toks[:, steps[i - 1]], steps[i - 1], query_pos=steps[i])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_raster_decoders_refuse_a_next_neighbor_model() -> None:
    m = _toy()
    for name in ("ar", "sjd", "jacobi"):
        with pytest.raises(ValueError, match="next_neighbor"):
            create_decoder(name)(m, torch.tensor([1]))
    with pytest.raises(ValueError, match="raster"):
        NextNeighborToyDecoder()(_gpt(), torch.tensor([1]))


# --------------------------------------------------------------------------- a drafter + target pair
class DraftUpsampleVerify(Decoder):
    """Greedy toy of multi-scale drafting: the drafter decodes its low-resolution grid, the up-sampler
    maps it to the target grid, the target verifies all drafts in one forward and then decodes
    greedily from the first mismatch (so the output equals greedy ``ar`` on the target)."""

    name = "toy_draft_upsample"
    expectation = "greedy_equals_ar"
    requires = ("drafter", "upsampler")

    def _decode(self, ctx: DecodeContext):
        d = ctx.for_model("drafter")
        low = torch.zeros(ctx.batch, d.order.num_tokens, dtype=torch.long)
        low[:, 0] = d.prefill().argmax(-1)
        for i in range(1, d.order.num_tokens):
            low[:, i] = d.forward(low[:, i - 1 : i], torch.tensor([i - 1]))[:, 0].argmax(-1)
        drafts = ctx.models["upsampler"](low.view(ctx.batch, *d.grid), ctx.grid).flatten(1)  # [B, N]
        N = ctx.order.num_tokens
        tokens = drafts.clone()
        tokens[:, 0] = ctx.prefill().argmax(-1)
        accepted = [torch.ones(ctx.batch, dtype=torch.long)]
        n = 1
        while n < N:  # one forward verifies every remaining draft (same fixed prefix in all rows)
            p = ctx.forward(tokens[:, n - 1 : N - 1], torch.arange(n - 1, N - 1))  # p[:, k] is for n + k
            greedy = p.argmax(-1)
            ok = (tokens[:, n:N] == greedy).all(0).long().cumprod(0)
            k = int(ok.sum())
            take = min(k + 1, N - n)
            tokens[:, n : n + take] = greedy[:, :take]
            accepted.append(torch.full((ctx.batch,), take))
            n += take
        return tokens, accepted, {"drafter_tokens": low}


def _nearest_up(low: Tensor, grid: tuple[int, int]) -> Tensor:
    return F.interpolate(low[:, None].float(), size=grid, mode="nearest")[:, 0].long()


def test_drafter_and_target_pair_counts_forwards_per_model() -> None:
    target = _gpt(4)
    torch.manual_seed(5)
    drafter = decodelab.create_model("test_gpt", block_size=4).eval()  # a 2x2-token drafter
    cond = torch.tensor([2, 6, 9])
    s = SamplingConfig(temperature=0.0)
    out = DraftUpsampleVerify()(target, cond, drafter=drafter, upsampler=_nearest_up, sampling=s)
    ref = create_decoder("ar")(target, cond, sampling=s)
    assert torch.equal(out.tokens, ref.tokens)
    assert out.nfe_by_model["drafter"] == 4  # prefill + 3 decode forwards on the 2x2 grid
    assert out.nfe_by_model["target"] == out.nfe <= ref.nfe
    assert out.summary()["nfe_by_model"] == out.nfe_by_model
    assert tuple(out.extras["drafter_tokens"].shape) == (3, 4)
    # when the drafter agrees with the target (zero heads: every argmax is token 0), one target
    # forward verifies the whole grid
    with torch.no_grad():
        for m in (target, drafter):
            m.output.weight.zero_()
    out = DraftUpsampleVerify()(target, cond, drafter=drafter, upsampler=_nearest_up, sampling=s)
    assert torch.equal(out.tokens, torch.zeros(3, 4, 4, dtype=torch.long))
    assert out.nfe_by_model == {"target": 2, "drafter": 4}


def test_decoders_check_the_models_they_are_given() -> None:
    target, drafter = _gpt(), _gpt(1)
    with pytest.raises(ValueError, match="needs a drafter"):
        DraftUpsampleVerify()(target, torch.tensor([1]), upsampler=_nearest_up)
    with pytest.raises(ValueError, match="does not use a drafter"):
        create_decoder("ar")(target, torch.tensor([1]), drafter=drafter)
    with pytest.raises(ValueError, match="not a TokenModel"):
        create_decoder("ar")(nn.Linear(2, 2), torch.tensor([1]))


def test_relaxed_acceptance_needs_token_embeddings() -> None:
    m = _gpt()

    class NoEmbeddings:
        def __getattr__(self, name):
            if name == "token_embeddings":
                raise AttributeError(name)
            return getattr(m, name)

    proxy = NoEmbeddings()
    assert isinstance(proxy, TokenModel) and not isinstance(proxy, SupportsTokenEmbeddings)
    with pytest.raises(ValueError, match="token embeddings"):
        create_decoder("sjd", relax_k=1)(proxy, torch.tensor([1]))
