"""Tests for the NAR model: proximity mask, the two heads' mixing, cache/forward equivalence, sizes, importer.

The reference is the teacher-forced, cache-free ``forward`` under the proximity mask: its
``logits[:, p]`` are the mixed logits for image position ``p``. Cached decoding writes one
anti-diagonal per ``decode_step`` and must reproduce them for the next anti-diagonal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import decodelab
from decodelab.hub import CheckpointMismatchError, load_pretrained
from decodelab.registry import MODELS
from decodelab.speculative.contract import GenerationOrder, TokenModel
from decodelab.speculative.sampling import cfg_mix
from decodelab.vision.models import NAR, import_nar

ATOL = 1e-4


def make_nar(name: str = "test_nar", seed: int = 0, **kwargs) -> NAR:
    """A tiny NAR with non-zero heads (upstream zero-inits ``output``, which would hide the horizontal head)."""
    torch.manual_seed(seed)
    model = MODELS.create(name, **kwargs)
    torch.nn.init.normal_(model.output.weight, 0.0, 0.5)
    torch.nn.init.normal_(model.medusa_output.weight, 0.0, 0.5)
    return model.eval()


def rand_tokens(model: NAR, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab_size, (batch, model.num_tokens), generator=g)


def condition(model: NAR, batch: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class ids, or caption embeddings with a different left padding per row."""
    if model.model_type == "c2i":
        return torch.arange(batch) % model.num_classes, None
    g = torch.Generator().manual_seed(seed)
    T, C = model.num_cond_tokens, model.cls_embedding.cap_proj.fc1.in_features
    mask = torch.ones(batch, T, dtype=torch.bool)
    for b in range(batch):
        mask[b, : (2 * b + 1) % T] = False
    return torch.randn(batch, T, C, generator=g), mask


def diagonal_logits(model: NAR, tokens: torch.Tensor, cond: torch.Tensor, mask=None) -> torch.Tensor:
    """Prefill, then one anti-diagonal per ``decode_step``: logits ``[B, N, V]`` aligned with ``forward``."""
    B, N = tokens.shape
    model.setup_caches(B)
    out = torch.zeros(B, N, model.vocab_size)
    out[:, 0] = model.prefill(cond, mask)
    steps = model.generation_order.steps()
    for s in range(1, len(steps)):
        out[:, steps[s]] = model.decode_step(tokens[:, steps[s - 1]], steps[s - 1], query_pos=steps[s])
    return out


# ----------------------------------------------------------------------------- layout, mask, sizes
def test_nar_is_a_next_neighbor_token_model() -> None:
    m = make_nar()
    assert isinstance(m, TokenModel) and m.generation_order.name == "next_neighbor"
    assert m.generation_order.num_steps == 7 and len(m.layers) == 3 and m.n_layer == 2


def test_state_dict_is_llamagen_plus_the_vertical_head() -> None:
    nar, gpt = make_nar(), MODELS.create("test_gpt")
    keys, gpt_keys = set(nar.state_dict()), set(gpt.state_dict())
    extra = keys - gpt_keys
    assert gpt_keys <= keys
    heads = {"medusa_norm.weight", "medusa_output.weight"}
    assert extra == {f"layers.2.{k}" for k in gpt.layers[0].state_dict()} | heads
    assert nar.state_dict()["medusa_output.weight"].shape == (64, 32)


def test_proximity_mask_structure() -> None:
    m = make_nar()
    T, (H, W) = m.num_cond_tokens, m.grid
    mask = m.proximity_mask()
    assert mask.shape == (T + H * W, T + H * W)
    img = mask[T:, T:]
    for q in range(H * W):
        for k in range(H * W):
            assert bool(img[q, k]) == (k // W + k % W <= q // W + q % W), (q, k)
    assert mask[T:, :T].all()  # every image token sees the whole condition
    assert not mask[:T, T:].any()  # the condition never sees the image
    assert torch.equal(mask[:T, :T], torch.ones(T, T, dtype=torch.bool).tril())
    # bidirectional inside an anti-diagonal: (0, 2) and (2, 0) see each other
    assert img[2, 8] and img[8, 2] and not img[1, 5]


def test_mixing_rule_is_upstreams() -> None:
    """(0,0): mean of both heads at the last condition position; row 0: horizontal only; column 0:
    vertical only; elsewhere the mean of the horizontal head on the left and the vertical head above."""
    m = make_nar(seed=3)
    toks, (cond, _) = rand_tokens(m, 2), condition(m, 2)
    T, (H, W) = m.num_cond_tokens, m.grid
    with torch.no_grad():
        got = m(toks, cond)
        h = torch.cat([m.embed_condition(cond), m.tok_embeddings(toks)], 1)
        L = h.shape[1]
        hr, hb = m._blocks(h, m.freqs_cis[:L][None], None, m.proximity_mask()[None, None], None)
        R, Bv = m.output(hr).float(), m.medusa_output(hb).float()
    torch.testing.assert_close(got[:, 0], (R[:, T - 1] + Bv[:, T - 1]) / 2)
    for i in range(H):
        for j in range(W):
            if i + j == 0:
                continue
            parts = ([R[:, T + i * W + j - 1]] if j else []) + ([Bv[:, T + (i - 1) * W + j]] if i else [])
            torch.testing.assert_close(got[:, i * W + j], sum(parts) / len(parts))


# Derived from upstream's configs (NAR-images/autoregressive/models/gpt.py): GPT-B/M/L/XL/XXL plus one
# extra TransformerBlock, medusa_norm and medusa_output; vocab 16384, 1001 class rows, SwiGLU hidden
# find_multiple(int(8 d / 3), 256). Paper Table 1: 130M, 290M (M), 372M, 816M, 1.46B.
def _upstream_count(n_layer: int, dim: int, t2i: bool = False) -> int:
    hidden = -(-int(2 * 4 * dim / 3) // 256) * 256
    block = 4 * dim * dim + 3 * dim * hidden + 2 * dim
    cond = (2048 * dim + dim * dim) if t2i else 1001 * dim
    return 16384 * dim + cond + (n_layer + 1) * block + 2 * dim + 2 * 16384 * dim


@pytest.mark.parametrize(
    ("name", "n_layer", "dim", "millions", "paper"),
    [("nar_b", 12, 768, 130.6, 130), ("nar_m", 18, 1024, 295.5, 290), ("nar_l", 24, 1024, 372.5, 372),
     ("nar_xl", 36, 1280, 816.0, 816), ("nar_xxl", 48, 1536, 1464.5, 1460)],
)  # fmt: skip
def test_registered_size_parameter_counts(name: str, n_layer: int, dim: int, millions: float, paper: int) -> None:
    with torch.device("meta"):
        model = MODELS.create(name)
    n = sum(p.numel() for p in model.parameters())
    assert n == _upstream_count(n_layer, dim)
    assert round(n / 1e6, 1) == millions
    assert abs(n / 1e6 - paper) / paper < (0.02 if name == "nar_m" else 0.005)  # the paper writes 290M for 295.5M
    assert model.vocab_size == 16384 and model.num_tokens == 256 and model.num_cond_tokens == 1


def test_t2i_size() -> None:
    with torch.device("meta"):
        model = MODELS.create("nar_xl_t2i")
    assert sum(p.numel() for p in model.parameters()) == _upstream_count(36, 1280, t2i=True)
    assert model.num_cond_tokens == 120 and model.condition_kind == "text"
    assert tuple(model.cls_embedding.uncond_embedding.shape) == (120, 2048)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="medusa_attention_num"):
        NAR(medusa_attention_num=0)
    m = MODELS.create("test_nar", medusa_attention_num=2)
    assert len(m.layers) == 4 and m.config["medusa_attention_num"] == 2


# ----------------------------------------------------------------------------- cache == forward
@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_diagonal_decoding_matches_forward(name: str) -> None:
    m = make_nar(name)
    toks = rand_tokens(m, 3)
    cond, mask = condition(m, 3)
    with torch.no_grad():
        want = m(toks, cond, cond_mask=mask)
    torch.testing.assert_close(diagonal_logits(m, toks, cond, mask), want, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_cfg_doubled_batch_matches_forward(name: str) -> None:
    m = make_nar(name, seed=4)
    toks = rand_tokens(m, 2)
    cond, mask = condition(m, 2)
    both = torch.cat([cond, m.null_condition(cond)])
    mask2 = None if mask is None else torch.cat([mask, mask])
    with torch.no_grad():
        want = cfg_mix(m(torch.cat([toks, toks]), both, cond_mask=mask2), 3.0)
    got = cfg_mix(diagonal_logits(m, torch.cat([toks, toks]), both, mask2), 3.0)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)


def test_default_queries_are_the_next_anti_diagonal() -> None:
    m = make_nar()
    toks, (cond, _) = rand_tokens(m, 2), condition(m, 2)
    m.setup_caches(2)
    m.prefill(cond)
    order = GenerationOrder.next_neighbor(m.grid)
    for s in range(1, order.num_steps):
        prev, cur = order.positions(s - 1), order.positions(s)
        assert torch.equal(m.default_queries(prev.expand(2, -1)), cur.expand(2, -1))
    with torch.no_grad():
        want = m(toks, cond)
    m.prefill(cond)
    m.decode_step(toks[:, :1], torch.tensor([0]))
    got = m.decode_step(toks[:, [1, 4]], torch.tensor([1, 4]))  # default queries: (0,2), (1,1), (2,0)
    torch.testing.assert_close(got, want[:, [2, 5, 8]], atol=ATOL, rtol=ATOL)


def test_per_row_positions_match_shared_positions() -> None:
    m = make_nar()
    toks, (cond, _) = rand_tokens(m, 2), condition(m, 2)
    shared = diagonal_logits(m, toks, cond)
    m.setup_caches(2)
    m.prefill(cond)
    m.decode_step(toks[:, :1], torch.tensor([[0], [0]]))
    # rows list the same anti-diagonal in different orders
    pos = torch.tensor([[1, 4], [4, 1]])
    got = m.decode_step(toks.gather(1, pos), pos, query_pos=torch.tensor([[2, 5, 8], [8, 5, 2]]))
    torch.testing.assert_close(got[0], shared[0, [2, 5, 8]], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(got[1], shared[1, [8, 5, 2]], atol=ATOL, rtol=ATOL)


# ----------------------------------------------------------------------------- the inference fast path
def _steps_and_caches(m: NAR, toks: torch.Tensor, cond: torch.Tensor, mask, per_row: bool):
    """Every logit of a decode and the final caches: one anti-diagonal per step (shared positions), or
    (``per_row``) two anti-diagonals per step listed in a different order in each row (masked, indexed writes)."""
    B = toks.shape[0]
    m.setup_caches(B)
    outs = [m.prefill(cond, mask)]
    steps = m.generation_order.steps()
    if not per_row:
        for s in range(1, len(steps)):
            outs.append(m.decode_step(toks[:, steps[s - 1]], steps[s - 1], query_pos=steps[s]))
    else:
        for s in range(1, len(steps), 2):
            written = torch.cat(steps[s - 1 : s + 1])
            pos = torch.stack([written if b % 2 else written.flip(0) for b in range(B)])
            query = torch.cat(steps[s : s + 2])
            outs.append(m.decode_step(toks.gather(1, pos), pos, query_pos=query))
    kv = [layer.attention.kv_cache for layer in m.layers]
    caches = [t.clone() for c in kv for t in (c.k_cache, c.v_cache)]
    return outs, caches


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("name,kw", [("test_nar", {}), ("test_nar_t2i", {}), ("test_nar", {"n_kv_head": 2})])
def test_fast_cached_blocks_equal_the_blocks_own_forward(name: str, kw: dict, per_row: bool) -> None:
    """The eval-mode fast path (one rotation call, slice writes, additive or no mask) changes no bit."""
    m = make_nar(name, **kw)
    toks = rand_tokens(m, 3)
    cond, mask = condition(m, 3)
    fast, fast_caches = _steps_and_caches(m, toks, cond, mask, per_row)
    m._blocks_cached = m._blocks  # every block's own forward, on the same cache layout
    slow, slow_caches = _steps_and_caches(m, toks, cond, mask, per_row)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    assert all(torch.equal(a, b) for a, b in zip(fast_caches, slow_caches))


def test_rotation_equals_apply_rotary_emb_bit_for_bit() -> None:
    from decodelab.vision.models.gpt import apply_rotary_emb
    from decodelab.vision.models.nar import _rotate

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, 8, generator=g)
    freqs = torch.randn(3, 5, 4, 2, generator=g)
    freqs[:, 0] = 0.0  # condition positions rotate by an all-zero table
    assert torch.equal(_rotate(x, freqs[:, :, None, :, 0], freqs[:, :, None, :, 1]), apply_rotary_emb(x, freqs))


@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_cache_is_laid_out_in_generation_order(name: str) -> None:
    """Condition first, then anti-diagonal by anti-diagonal: each anti-diagonal is one run of slots, and
    the slots before the end of its run are exactly the keys it may see."""
    m = make_nar(name)
    T = m.num_cond_tokens
    order, slot = m.cache_order, m.cache_slot
    assert torch.equal(slot[order], torch.arange(m.seq_len)) and torch.equal(order[:T], torch.arange(T))
    rank = m.attention_rank[order]
    assert bool((rank[1:] >= rank[:-1]).all())
    visible = m.proximity_mask()
    for pos in m.generation_order.steps():
        s = slot[pos + T]
        assert torch.equal(s, torch.arange(int(s[0]), int(s[0]) + len(pos)))
        end = int(s[-1]) + 1
        assert bool(visible[pos + T][:, order[:end]].all()) and not bool(visible[pos + T][:, order[end:]].any())


def test_setup_caches_reuses_a_cache_of_the_same_shape() -> None:
    m = make_nar()
    m.setup_caches(2)
    first = m.layers[0].attention.kv_cache
    m.prefill(torch.tensor([1, 2]))
    assert first.v_cache.abs().sum() > 0  # (its keys are zero: RoPE's table is all-zero at condition positions)
    m._key_valid[:, 0] = False
    m.setup_caches(2)  # zeroed in place: the state of a new allocation
    assert m.layers[0].attention.kv_cache is first
    assert all(not layer.attention.kv_cache.k_cache.any() and not layer.attention.kv_cache.v_cache.any()
               for layer in m.layers)  # fmt: skip
    assert bool(m._key_valid.all())
    m.setup_caches(3)
    assert m.layers[0].attention.kv_cache is not first and m.layers[0].attention.kv_cache.k_cache.shape[0] == 3
    assert m.max_batch_size == 3 and m._key_valid.shape[0] == 3


def test_even_slice() -> None:
    from decodelab.vision.models.nar import _even_slice

    assert _even_slice(torch.tensor([3, 18, 33])) == slice(3, 34, 15)
    assert _even_slice(torch.tensor([5])) == slice(5, 6, 1)
    assert _even_slice(torch.tensor([1, 2, 4])) is None
    assert _even_slice(torch.tensor([4, 3])) is None
    assert _even_slice(torch.tensor([[1, 2]])) is None


def test_decode_step_errors_name_the_fix() -> None:
    m = make_nar()
    m.setup_caches(1)
    m.prefill(torch.tensor([1]))
    with pytest.raises(ValueError, match="whole previous anti-diagonal"):
        # (1, 1) needs both (0, 1) and (1, 0)
        m.decode_step(torch.tensor([[3]]), torch.tensor([1]), query_pos=torch.tensor([5]))
    with pytest.raises(ValueError, match="position 0 comes from prefill"):
        m.decode_step(torch.tensor([[3]]), torch.tensor([0]), query_pos=torch.tensor([0]))
    with pytest.raises(ValueError, match="image positions"):
        m.decode_step(torch.tensor([[3]]), torch.tensor([16]))
    from decodelab.speculative.contract import SupportsRefill, TokenModel

    assert isinstance(m, TokenModel) and not isinstance(m, SupportsRefill)  # rows never finish early
    with pytest.raises(ValueError, match="whole image"):
        m(torch.zeros(1, 15, dtype=torch.long), torch.tensor([1]))


def test_save_and_load_pretrained(tmp_path: Path) -> None:
    m = make_nar(medusa_attention_num=2)
    m.save_pretrained(tmp_path / "nar")
    back = load_pretrained(tmp_path / "nar")
    assert isinstance(back, NAR) and back.medusa_attention_num == 2
    toks, (cond, _) = rand_tokens(m, 1), condition(m, 1)
    with torch.no_grad():
        assert torch.equal(back(toks, cond), m(toks, cond))


# ----------------------------------------------------------------------------- importer
@pytest.fixture(scope="module")
def source_nar() -> NAR:
    return make_nar(seed=7)


@pytest.mark.parametrize("layout", ["plain", "model", "module", "state_dict"])
def test_import_nar_layouts(tmp_path: Path, source_nar: NAR, layout: str) -> None:
    sd = {k: v.clone() for k, v in source_nar.state_dict().items()}  # released last_version.pt: a raw OrderedDict
    obj = sd if layout == "plain" else {layout: sd}
    p = tmp_path / "last_version.pt"
    torch.save(obj, p)
    model = import_nar(p, name="test_nar")
    assert isinstance(model, NAR) and not model.training
    toks, (cond, _) = rand_tokens(model, 2), condition(model, 2)
    with torch.no_grad():
        assert torch.equal(model(toks, cond), source_nar(toks, cond))
    assert torch.equal(diagonal_logits(model, toks, cond), diagonal_logits(source_nar, toks, cond))


def test_import_nar_ema_and_training_checkpoint(tmp_path: Path, source_nar: NAR) -> None:
    sd = source_nar.state_dict()
    ema = make_nar(seed=8).state_dict()
    p = tmp_path / "0001000.pt"
    torch.save({"model": sd, "ema": ema, "steps": 1000, "args": argparse.Namespace(gpt_model="GPT-B")}, p)
    assert torch.equal(import_nar(p, name="test_nar").medusa_output.weight, sd["medusa_output.weight"])
    assert torch.equal(import_nar(p, name="test_nar", weights="ema").medusa_output.weight, ema["medusa_output.weight"])
    torch.save({"model": sd}, p)
    with pytest.raises(ValueError, match="no EMA weights"):
        import_nar(p, name="test_nar", weights="ema")


def test_import_nar_names_every_bad_key(tmp_path: Path, source_nar: NAR) -> None:
    gpt = MODELS.create("test_gpt")  # a LlamaGen checkpoint: no vertical head
    p = tmp_path / "llamagen.pt"
    torch.save({"model": gpt.state_dict()}, p)
    with pytest.raises(CheckpointMismatchError) as e:
        import_nar(p, name="test_nar")
    msg = str(e.value)
    assert "missing keys" in msg and "medusa_output.weight" in msg and "medusa_norm.weight" in msg
    assert "layers.2.attention.wqkv.weight" in msg
    sd = dict(source_nar.state_dict())
    sd["vertical_head.weight"] = sd.pop("medusa_output.weight")
    sd["medusa_norm.weight"] = torch.ones(48)
    torch.save(sd, p)
    with pytest.raises(CheckpointMismatchError) as e:
        import_nar(p, name="test_nar")
    msg = str(e.value)
    assert "missing keys: medusa_output.weight" in msg and "unexpected keys: vertical_head.weight" in msg
    assert "medusa_norm.weight: checkpoint (48,) vs model (32,)" in msg
    with pytest.raises(ValueError, match="not a NAR preset"):
        import_nar(p, name="test_gpt")
    with pytest.raises(FileNotFoundError):
        import_nar(tmp_path / "missing.pt", name="test_nar")


def test_import_ignores_non_persistent_upstream_buffers(tmp_path: Path, source_nar: NAR) -> None:
    sd = dict(source_nar.state_dict())
    sd["freqs_cis"] = torch.zeros(17, 4, 2)
    sd["layers.2.attention.kv_cache.k_cache"] = torch.zeros(1)
    p = tmp_path / "old.pt"
    torch.save(sd, p)
    assert torch.equal(import_nar(p, name="test_nar").medusa_output.weight, source_nar.medusa_output.weight)


def test_public_api() -> None:
    assert {"nar_b", "nar_m", "nar_l", "nar_xl", "nar_xxl", "nar_xl_t2i", "test_nar", "test_nar_t2i"} <= set(
        decodelab.list_models("*nar*")
    )
