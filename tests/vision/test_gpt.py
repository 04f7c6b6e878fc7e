"""Tests for the LlamaGen GPT: cache/forward equivalence, RoPE, sizes, and the upstream importer.

The reference everywhere is the teacher-forced full-sequence ``forward`` (no cache): its
``logits[:, i]`` predict image token ``i``, and ``decode_step`` at image position ``p`` gives the
distribution for position ``p + 1``, i.e. ``forward``'s ``logits[:, p + 1]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from decodelab.hub import CheckpointMismatchError
from decodelab.registry import MODELS
from decodelab.vision.models import GPT, import_llamagen_gpt
from decodelab.vision.models.gpt import apply_rotary_emb, precompute_freqs_cis_2d

ATOL = 1e-4


def make_gpt(name: str = "test_gpt", seed: int = 0, **kwargs) -> GPT:
    """A tiny GPT with a non-zero output head (upstream zero-inits it, which would make logits constant)."""
    torch.manual_seed(seed)
    model = MODELS.create(name, **kwargs)
    torch.nn.init.normal_(model.output.weight, 0.0, 0.5)
    return model.eval()


def rand_tokens(model: GPT, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab_size, (batch, model.num_tokens), generator=g)


def captions(model: GPT, batch: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption embeddings and a left-padding mask with a different amount of padding per row."""
    g = torch.Generator().manual_seed(seed)
    T, C = model.num_cond_tokens, model.cls_embedding.cap_proj.fc1.in_features
    emb = torch.randn(batch, T, C, generator=g)
    mask = torch.ones(batch, T, dtype=torch.bool)
    for b in range(batch):
        mask[b, : (2 * b + 1) % T] = False
    return emb, mask


def condition(model: GPT, batch: int, masked: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    if model.model_type == "c2i":
        return torch.arange(batch) % model.num_classes, None
    emb, mask = captions(model, batch)
    return emb, (mask if masked else None)


def incremental_logits(model: GPT, tokens: torch.Tensor, cond: torch.Tensor, mask=None) -> torch.Tensor:
    """Prefill, then one image token per ``decode_step``: logits ``[B, N, V]`` aligned with ``forward``."""
    B, N = tokens.shape
    model.setup_caches(B)
    out = [model.prefill(cond, mask)]
    for i in range(N - 1):
        out.append(model.decode_step(tokens[:, i : i + 1], torch.tensor([i]))[:, 0])
    return torch.stack(out, 1)


def prefill_and_write(model: GPT, tokens: torch.Tensor, cond, mask, upto: int) -> None:
    """Fresh cache holding the condition and image positions ``0..upto-1``."""
    model.setup_caches(tokens.shape[0])
    model.prefill(cond, mask)
    if upto:
        model.decode_step(tokens[:, :upto], torch.arange(upto))


# ----------------------------------------------------------------------------- layout and sizes


def test_state_dict_follows_upstream_layout() -> None:
    """Key names and shapes of LlamaGen's gpt.py (notes §5.2), written out independently of the model."""
    c2i = MODELS.create("test_gpt")
    d, V, L = 32, 64, 2
    hidden = 96  # find_multiple(int(2 * 4 * 32 / 3) = 85, 16)
    want = {
        "tok_embeddings.weight": (V, d),
        "cls_embedding.embedding_table.weight": (10 + 1, d),  # row num_classes = the null class
        "norm.weight": (d,),
        "output.weight": (V, d),
    }
    for i in range(L):
        want.update({
            f"layers.{i}.attention.wqkv.weight": (3 * d, d),
            f"layers.{i}.attention.wo.weight": (d, d),
            f"layers.{i}.feed_forward.w1.weight": (hidden, d),
            f"layers.{i}.feed_forward.w3.weight": (hidden, d),
            f"layers.{i}.feed_forward.w2.weight": (d, hidden),
            f"layers.{i}.attention_norm.weight": (d,),
            f"layers.{i}.ffn_norm.weight": (d,),
        })  # fmt: skip
    c2i.setup_caches(2)  # caches and the RoPE table are not persistent
    assert {k: tuple(v.shape) for k, v in c2i.state_dict().items()} == want

    t2i = MODELS.create("test_gpt_t2i")
    t2i_keys = {k: tuple(v.shape) for k, v in t2i.state_dict().items()}
    assert t2i_keys["cls_embedding.cap_proj.fc1.weight"] == (d, 24)
    assert t2i_keys["cls_embedding.cap_proj.fc2.weight"] == (d, d)
    assert t2i_keys["cls_embedding.uncond_embedding"] == (6, 24)
    assert "cls_embedding.embedding_table.weight" not in t2i_keys
    assert not any(p is t2i.cls_embedding.uncond_embedding for p in t2i.parameters())  # a buffer upstream


@pytest.mark.parametrize(("size", "millions", "upstream"), [("b", 110.9, 111), ("l", 342.9, 343), ("xl", 774.7, 775)])
def test_registered_size_parameter_counts(size: str, millions: float, upstream: int) -> None:
    with torch.device("meta"):
        model = MODELS.create(f"llamagen_gpt_{size}")
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 1) == millions
    assert abs(n / 1e6 - upstream) / upstream < 0.005
    assert model.vocab_size == 16384 and model.num_tokens == 256 and model.num_cond_tokens == 1
    assert model.output.weight.is_meta


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="model_type"):
        GPT(dim=32, n_layer=1, n_head=4, model_type="i2i")
    with pytest.raises(ValueError, match="square"):
        GPT(dim=32, n_layer=1, n_head=4, block_size=15)
    with pytest.raises(ValueError, match="divisible"):
        GPT(dim=30, n_layer=1, n_head=4)


# ----------------------------------------------------------------------------- RoPE


def test_rope_table_zero_at_condition_positions() -> None:
    for name in ("test_gpt", "test_gpt_t2i"):
        model = MODELS.create(name)
        T, N = model.num_cond_tokens, model.num_tokens
        f = model.freqs_cis
        assert f.shape == (T + N, model.head_dim // 2, 2)
        assert torch.count_nonzero(f[:T]) == 0
        # Image position 0 (row 0, column 0) is the identity rotation: cos 1, sin 0.
        assert torch.equal(f[T, :, 0], torch.ones(model.head_dim // 2))
        assert torch.equal(f[T, :, 1], torch.zeros(model.head_dim // 2))
        assert torch.allclose(f[T:].pow(2).sum(-1), torch.ones(N, model.head_dim // 2))
    # So condition queries and keys are zeroed by the rotation (upstream quirk).
    x = torch.randn(1, 3, 2, 8)
    rotated = apply_rotary_emb(x, precompute_freqs_cis_2d(2, 8, 10000.0, 3)[None, :3])
    assert torch.count_nonzero(rotated) == 0


def test_rope_2d_layout_rows_then_columns() -> None:
    grid, head_dim, base, T = 3, 16, 10000.0, 2
    f = precompute_freqs_cis_2d(grid, head_dim, base, T)
    half = head_dim // 2
    inv = 1.0 / base ** (torch.arange(0, half, 2).float() / half)  # [half / 2]
    for r in range(grid):
        for c in range(grid):
            ang = torch.cat([r * inv, c * inv])  # first half of the pairs: row; second half: column
            assert torch.allclose(f[T + r * grid + c, :, 0], ang.cos(), atol=1e-6)
            assert torch.allclose(f[T + r * grid + c, :, 1], ang.sin(), atol=1e-6)


def test_apply_rotary_emb_rotates_interleaved_pairs() -> None:
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])  # [B=1, S=1, H=1, D=4]
    theta = torch.tensor([0.3, -1.1])
    freqs = torch.stack([theta.cos(), theta.sin()], -1)[None, None]  # [1, 1, 2, 2]
    out = apply_rotary_emb(x, freqs)[0, 0, 0]
    for j, (a, b) in enumerate([(1.0, 2.0), (3.0, 4.0)]):
        z = complex(a, b) * complex(theta[j].cos(), theta[j].sin())
        assert out[2 * j].item() == pytest.approx(z.real, abs=1e-6)
        assert out[2 * j + 1].item() == pytest.approx(z.imag, abs=1e-6)


# ----------------------------------------------------------------------------- cache == forward


@pytest.mark.parametrize("name", ["test_gpt", "test_gpt_t2i"])
def test_incremental_decoding_matches_forward(name: str) -> None:
    model = make_gpt(name)
    tokens = rand_tokens(model, 3)
    cond, mask = condition(model, 3)
    ref = model(tokens, cond, cond_mask=mask)
    assert ref.shape == (3, model.num_tokens, model.vocab_size) and ref.dtype == torch.float32
    inc = incremental_logits(model, tokens, cond, mask)
    torch.testing.assert_close(inc, ref, atol=ATOL, rtol=0)
    # The comparison is not vacuous: positions and rows really differ.
    assert (ref[:, 1:] - ref[:, :-1]).abs().max() > 1e-2
    assert (ref[1:] - ref[:-1]).abs().max() > 1e-2


def test_caption_mask_changes_logits_and_padding_is_ignored() -> None:
    model = make_gpt("test_gpt_t2i")
    tokens = rand_tokens(model, 2)
    emb, mask = captions(model, 2)
    masked = model(tokens, emb, cond_mask=mask)
    assert (masked - model(tokens, emb)).abs().max() > 1e-3
    # Whatever sits at padded caption positions must not matter.
    emb2 = emb.clone()
    emb2[~mask] = torch.randn(int((~mask).sum()), emb.shape[-1]) * 10
    torch.testing.assert_close(model(tokens, emb2, cond_mask=mask), masked, atol=ATOL, rtol=0)
    torch.testing.assert_close(incremental_logits(model, tokens, emb2, mask), masked, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["test_gpt", "test_gpt_t2i"])
def test_cfg_doubled_batch_matches_forward(name: str) -> None:
    model = make_gpt(name)
    B = 2
    tokens = rand_tokens(model, B)
    cond, mask = condition(model, B)
    both = torch.cat([cond, model.null_condition(cond)])
    both_mask = None if mask is None else torch.cat([mask, mask])
    toks2 = torch.cat([tokens, tokens])
    ref = model(toks2, both, cond_mask=both_mask)
    torch.testing.assert_close(incremental_logits(model, toks2, both, both_mask), ref, atol=ATOL, rtol=0)
    assert (ref[:B] - ref[B:]).abs().max() > 1e-2  # the null condition really differs
    # The null rows equal the conditional rows with every condition dropped.
    dropped = model(tokens, cond, drop=torch.ones(B, dtype=torch.bool), cond_mask=mask)
    torch.testing.assert_close(dropped, ref[B:], atol=ATOL, rtol=0)


def test_null_condition() -> None:
    c2i = make_gpt("test_gpt")
    assert torch.equal(c2i.null_condition(torch.tensor([0, 3, 9])), torch.tensor([10, 10, 10]))
    t2i = make_gpt("test_gpt_t2i")
    emb, _ = captions(t2i, 2)
    null = t2i.null_condition(emb)
    assert null.shape == emb.shape
    assert torch.equal(null[0], t2i.cls_embedding.uncond_embedding) and torch.equal(null[1], null[0])


@pytest.mark.parametrize("name", ["test_gpt", "test_gpt_t2i"])
def test_non_contiguous_positions_match_forward(name: str) -> None:
    model = make_gpt(name)
    tokens = rand_tokens(model, 2)
    cond, mask = condition(model, 2)
    ref = model(tokens, cond, cond_mask=mask)
    # Re-run a scattered subset of already written positions: each query sees positions <= its own.
    prefill_and_write(model, tokens, cond, mask, upto=10)
    pos = torch.tensor([3, 8, 5])
    out = model.decode_step(tokens[:, pos], pos)
    torch.testing.assert_close(out, ref[:, pos + 1], atol=ATOL, rtol=0)
    # Fill a gap out of order in one call: positions 6..9 written as [8, 6, 9, 7].
    prefill_and_write(model, tokens, cond, mask, upto=6)
    pos = torch.tensor([8, 6, 9, 7])
    out = model.decode_step(tokens[:, pos], pos)
    torch.testing.assert_close(out, ref[:, pos + 1], atol=ATOL, rtol=0)


def test_stale_cache_entries_are_overwritten() -> None:
    """Rollback is free: rejected drafts written at positions 5..9 are overwritten by the next pass."""
    model = make_gpt()
    tokens = rand_tokens(model, 2)
    cond, _ = condition(model, 2)
    ref = model(tokens, cond)
    prefill_and_write(model, tokens, cond, None, upto=5)
    wrong = (tokens[:, 5:10] + 1) % model.vocab_size
    stale = model.decode_step(wrong, torch.arange(5, 10))
    assert (stale[:, 1:] - ref[:, 7:11]).abs().max() > 1e-2  # the drafts did change what followed
    out = model.decode_step(tokens[:, 5:12], torch.arange(5, 12))
    torch.testing.assert_close(out, ref[:, 6:13], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["test_gpt", "test_gpt_t2i"])
def test_per_row_positions_match_forward(name: str) -> None:
    model = make_gpt(name)
    B = 3
    tokens = rand_tokens(model, B)
    cond, mask = condition(model, B)
    ref = model(tokens, cond, cond_mask=mask)
    # Rows at different offsets: after writing 0..11 everywhere, row b re-runs start[b]..start[b]+2.
    starts = [2, 7, 11]
    prefill_and_write(model, tokens, cond, mask, upto=12)
    pos = torch.stack([torch.arange(s, s + 3) for s in starts])  # [B, S]
    out = model.decode_step(torch.gather(tokens, 1, pos), pos)
    want = torch.stack([ref[b, pos[b] + 1] for b in range(B)])
    torch.testing.assert_close(out, want, atol=ATOL, rtol=0)
    # A genuinely ragged cache: row b only ever wrote its own prefix 0..start[b]-1 (shorter rows
    # repeat their last position, rewriting the same entry), then one per-row step of 4 tokens.
    prefill_and_write(model, tokens, cond, mask, upto=0)
    prefix = torch.stack([torch.arange(max(starts)).clamp_max(s - 1) for s in starts])  # [B, 11]
    model.decode_step(torch.gather(tokens, 1, prefix), prefix)
    pos = torch.stack([torch.arange(s, s + 4) for s in starts])
    out = model.decode_step(torch.gather(tokens, 1, pos), pos)
    want = torch.stack([ref[b, pos[b] + 1] for b in range(B)])
    torch.testing.assert_close(out, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["test_gpt", "test_gpt_t2i"])
def test_refill_step_starts_a_new_image_in_one_row(name: str) -> None:
    # Continuous batching: row 1 finishes its image and starts another one inside the same forward
    # in which rows 0 and 2 keep decoding; then every row continues through the cache.
    model = make_gpt(name)
    B, T = 3, model.num_cond_tokens
    S = max(T, 4)
    tokens = rand_tokens(model, B)
    cond, mask = condition(model, B)
    new_tokens = rand_tokens(model, 1, seed=9)
    if model.model_type == "c2i":
        new_cond, new_mask = torch.tensor([5]), None
    else:
        emb, m = captions(model, 4, seed=7)
        new_cond, new_mask = emb[3:], m[3:]  # a different amount of padding than row 1's
    ref_old = model(tokens, cond, cond_mask=mask)
    ref_new = model(new_tokens, new_cond, cond_mask=new_mask)[0]
    prefill_and_write(model, tokens, cond, mask, upto=2)
    pos = torch.arange(2, 2 + S).expand(B, -1).clone()
    out = model.refill_step(torch.gather(tokens, 1, pos), pos, torch.tensor([1]), new_cond, new_mask)
    for b in (0, 2):
        torch.testing.assert_close(out[b], ref_old[b, pos[b] + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1, T - 1], ref_new[0], atol=ATOL, rtol=0)
    # the next forward: rows 0 and 2 go on, row 1 decodes its new image from position 0
    pos = torch.stack([torch.arange(2 + S, 2 + 2 * S), torch.arange(S), torch.arange(2 + S, 2 + 2 * S)])
    inp = torch.gather(tokens, 1, pos)
    inp[1] = new_tokens[0, :S]
    out = model.decode_step(inp, pos)
    for b in (0, 2):
        torch.testing.assert_close(out[b], ref_old[b, pos[b] + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], ref_new[1 : S + 1], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="conditions for"):
        model.refill_step(inp, pos, torch.tensor([0, 1]), new_cond, new_mask)


def test_per_row_positions_with_shared_values_equal_shared_positions() -> None:
    model = make_gpt()
    tokens = rand_tokens(model, 2)
    cond, _ = condition(model, 2)
    prefill_and_write(model, tokens, cond, None, upto=4)
    shared = model.decode_step(tokens[:, 4:7], torch.arange(4, 7))
    prefill_and_write(model, tokens, cond, None, upto=4)
    per_row = model.decode_step(tokens[:, 4:7], torch.arange(4, 7).expand(2, -1).clone())
    torch.testing.assert_close(per_row, shared, atol=1e-6, rtol=0)


def test_prefill_returns_logits_for_token_zero_and_uses_the_cache_batch() -> None:
    model = make_gpt()
    tokens = rand_tokens(model, 2)
    cond = torch.tensor([4, 4])
    model.setup_caches(4)  # a cache larger than the batch is fine
    first = model.prefill(cond)
    assert first.shape == (2, model.vocab_size)
    torch.testing.assert_close(first, model(tokens, cond)[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(first[0], first[1], atol=1e-6, rtol=0)


def test_cached_inference_errors() -> None:
    model = make_gpt()
    model.clear_caches()
    with pytest.raises(RuntimeError, match="setup_caches"):
        model.prefill(torch.tensor([1]))
    model.setup_caches(1)
    with pytest.raises(RuntimeError, match="setup_caches"):
        model.prefill(torch.tensor([1, 2]))  # batch larger than the cache
    model.prefill(torch.tensor([1]))
    with pytest.raises(ValueError, match=r"tokens must be \[B, S\]"):
        model.decode_step(torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one position per token"):
        model.decode_step(torch.tensor([[1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="beyond the cache length"):
        model.decode_step(torch.tensor([[1]]), torch.tensor([model.max_seq_length]))
    with pytest.raises(ValueError, match=r"cond_mask must be \[B, 1\]"):
        model.prefill(torch.tensor([1]), torch.ones(1, 2, dtype=torch.bool))
    assert model.max_seq_length % 8 == 0 and model.max_seq_length >= model.seq_len


def test_check_condition() -> None:
    c2i = make_gpt()
    c2i.check_condition(torch.tensor([0, 9, 10]))  # 10 = the null class
    for bad in (torch.tensor([11]), torch.tensor([-1])):
        with pytest.raises(ValueError, match=r"valid ids are 0\.\.9"):
            c2i.check_condition(bad)
    for bad in (torch.tensor([[1]]), torch.tensor([1.0])):
        with pytest.raises(ValueError, match="integer class ids"):
            c2i.check_condition(bad)
    t2i = make_gpt("test_gpt_t2i")
    t2i.check_condition(torch.zeros(2, 6, 24))
    with pytest.raises(ValueError, match=r"\[B, 6, 24\]"):
        t2i.check_condition(torch.zeros(2, 5, 24))


# ----------------------------------------------------------------------------- dropout


def test_dropout_is_off_in_eval() -> None:
    kwargs = dict(token_dropout_p=0.5, resid_dropout_p=0.5, ffn_dropout_p=0.5, drop_path_rate=0.5)
    model = make_gpt(attn_dropout_p=0.5, class_dropout_prob=0.5, **kwargs)
    tokens = rand_tokens(model, 2)
    cond = torch.tensor([1, 2])
    # Reference: the same weights in a model whose dropouts are all zero.
    plain = make_gpt(attn_dropout_p=0.0, **{k: 0.0 for k in kwargs})
    plain.load_state_dict(model.state_dict())
    ref = plain(tokens, cond)
    torch.manual_seed(123)
    a = model(tokens, cond)
    torch.manual_seed(456)
    b = model(tokens, cond)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(incremental_logits(model, tokens, cond), ref, atol=ATOL, rtol=0)
    # ... and on in training mode (so the check above is meaningful).
    model.train()
    torch.manual_seed(123)
    t1 = model(tokens, cond)
    torch.manual_seed(456)
    t2 = model(tokens, cond)
    assert (t1 - t2).abs().max() > 1e-3


def test_class_dropout_in_training_uses_the_null_class() -> None:
    model = make_gpt(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=1.0)
    tokens = rand_tokens(model, 2)
    cond = torch.tensor([1, 2])
    null_ref = model(tokens, model.null_condition(cond))
    model.train()
    torch.testing.assert_close(model(tokens, cond), null_ref, atol=1e-5, rtol=0)
    # An explicit drop mask wins over random dropout.
    keep = model(tokens, cond, drop=torch.zeros(2, dtype=torch.bool))
    assert (keep - null_ref).abs().max() > 1e-3


# ----------------------------------------------------------------------------- importer


def _logits(model: GPT, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return model.eval()(tokens, cond)


@pytest.fixture(scope="module")
def source_gpt() -> GPT:
    return make_gpt(seed=7)


@pytest.mark.parametrize("layout", ["model", "module", "state_dict", "plain"])
def test_import_llamagen_layouts(tmp_path: Path, source_gpt: GPT, layout: str) -> None:
    sd = {k: v.clone() for k, v in source_gpt.state_dict().items()}
    sd["freqs_cis"] = precompute_freqs_cis_2d(4, 8, 10000.0, 1)  # older upstream saves carry it
    obj = sd if layout == "plain" else {layout: sd}
    p = tmp_path / "c2i_test.pt"
    torch.save(obj, p)
    model = import_llamagen_gpt(p, name="test_gpt")
    assert isinstance(model, GPT) and not model.training
    for k, v in source_gpt.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    tokens = rand_tokens(model, 2)
    cond = torch.tensor([3, 8])
    assert torch.equal(_logits(model, tokens, cond), _logits(source_gpt, tokens, cond))


def test_import_upstream_training_checkpoint(tmp_path: Path, source_gpt: GPT) -> None:
    """LlamaGen's train_c2i.py saves {"model", "optimizer", "steps", "args": argparse.Namespace}."""
    sd = source_gpt.state_dict()
    opt = torch.optim.AdamW(source_gpt.parameters(), lr=1e-4, betas=(0.9, 0.95))
    ckpt = {
        "model": sd,
        "optimizer": opt.state_dict(),
        "steps": 100,
        "args": argparse.Namespace(gpt_model="GPT-B", image_size=256, cfg_scale=4.0),
        "ema": {k: torch.zeros_like(v) for k, v in sd.items()},
    }
    p = tmp_path / "0000100.pt"
    torch.save(ckpt, p)
    model = import_llamagen_gpt(p, name="test_gpt")
    assert torch.equal(model.output.weight, source_gpt.output.weight)  # the default is "model", not "ema"
    assert torch.equal(import_llamagen_gpt(p, name="test_gpt", weights="model").output.weight, sd["output.weight"])


def test_import_ema_weights_on_request(tmp_path: Path, source_gpt: GPT) -> None:
    """weights="ema" loads the EMA copy LlamaGen's train_c2i.py --ema saves beside "model"."""
    sd = source_gpt.state_dict()
    ema = make_gpt(seed=8).state_dict()
    p = tmp_path / "ema.pt"
    torch.save({"model": sd, "ema": ema, "steps": 100, "args": argparse.Namespace(ema=True)}, p)
    model = import_llamagen_gpt(p, name="test_gpt", weights="ema")
    for k, v in ema.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not torch.equal(model.output.weight, sd["output.weight"])
    no_ema = tmp_path / "no_ema.pt"
    torch.save({"model": sd, "steps": 100}, no_ema)
    with pytest.raises(ValueError, match=r"no EMA weights .*weights='model'"):
        import_llamagen_gpt(no_ema, name="test_gpt", weights="ema")
    only_ema = tmp_path / "only_ema.pt"
    torch.save({"ema": ema, "steps": 100}, only_ema)
    with pytest.raises(ValueError, match="only EMA weights.*weights='ema'"):
        import_llamagen_gpt(only_ema, name="test_gpt")
    with pytest.raises(ValueError, match="'model' or 'ema'"):
        import_llamagen_gpt(p, name="test_gpt", weights="avg")


def test_import_compiled_and_cached_keys(tmp_path: Path, source_gpt: GPT) -> None:
    sd = {f"_orig_mod.{k}": v for k, v in source_gpt.state_dict().items()}  # torch.compile'd model
    sd["layers.0.attention.kv_cache.k_cache"] = torch.zeros(1)
    sd["causal_mask"] = torch.ones(2, 2)
    p = tmp_path / "compiled.pt"
    torch.save({"model": sd}, p)
    model = import_llamagen_gpt(p, name="test_gpt")
    assert torch.equal(model.tok_embeddings.weight, source_gpt.tok_embeddings.weight)


def test_import_renamed_key_names_missing_and_unexpected(tmp_path: Path, source_gpt: GPT) -> None:
    sd = dict(source_gpt.state_dict())
    sd["final_norm.weight"] = sd.pop("norm.weight")
    p = tmp_path / "renamed.pt"
    torch.save({"model": sd}, p)
    with pytest.raises(CheckpointMismatchError) as e:
        import_llamagen_gpt(p, name="test_gpt")
    msg = str(e.value)
    assert "missing keys: norm.weight" in msg
    assert "unexpected keys: final_norm.weight" in msg
    assert "renamed.pt" in msg and "GPT" in msg
    assert isinstance(e.value, ValueError)


def test_import_wrong_shape_is_named(tmp_path: Path, source_gpt: GPT) -> None:
    sd = dict(source_gpt.state_dict())
    sd["output.weight"] = torch.zeros(65, 32)
    p = tmp_path / "shape.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointMismatchError) as e:
        import_llamagen_gpt(p, name="test_gpt")
    assert "output.weight: checkpoint (65, 32) vs model (64, 32)" in str(e.value)
    assert "missing keys" not in str(e.value)


def test_import_c2i_checkpoint_as_t2i_fails(tmp_path: Path, source_gpt: GPT) -> None:
    p = tmp_path / "c2i.pt"
    torch.save({"model": source_gpt.state_dict()}, p)
    with pytest.raises(CheckpointMismatchError) as e:
        import_llamagen_gpt(p, name="test_gpt_t2i")
    msg = str(e.value)
    assert "cls_embedding.cap_proj.fc1.weight" in msg and "cls_embedding.embedding_table.weight" in msg


class _NotWeights:
    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_import_refuses_non_tensor_pickles(tmp_path: Path) -> None:
    p = tmp_path / "object.pt"
    torch.save({"model": _NotWeights()}, p)
    with pytest.raises(ValueError, match="weights-only"):
        import_llamagen_gpt(p, name="test_gpt")
    p2 = tmp_path / "no_tensors.pt"
    torch.save({"model": {"a": 1}}, p2)
    with pytest.raises(ValueError, match="state dict"):
        import_llamagen_gpt(p2, name="test_gpt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        import_llamagen_gpt(tmp_path / "missing.pt", name="test_gpt")
