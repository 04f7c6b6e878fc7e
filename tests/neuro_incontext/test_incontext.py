"""In-context cross-subject decoding: both stage models, the loss, the synthetic sampler, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from decodelab.neuro.incontext import (
    INCONTEXT_PRESETS,
    FunctionalInversionDecoder,
    InContextDecoder,
    InContextVoxelEncoder,
    SubjectData,
    SyntheticVoxelPrior,
    VoxelEncoderOutput,
    create_incontext,
    info_nce,
    inversion_loss,
    sample_subject_batch,
    sample_synthetic_batch,
    train_inversion_decoder,
    train_voxel_encoder,
)

E = 6


def _encoder(**kw) -> InContextVoxelEncoder:
    torch.manual_seed(0)
    return InContextVoxelEncoder(E, **{**INCONTEXT_PRESETS["test"]["encoder"], **kw}).eval()


def _decoder(**kw) -> FunctionalInversionDecoder:
    torch.manual_seed(0)
    return FunctionalInversionDecoder(E, **{**INCONTEXT_PRESETS["test"]["decoder"], **kw}).eval()


# --------------------------------------------------------------------------------- stage 1


def test_encoder_shapes_and_shared_context():
    enc = _encoder()
    embeds, betas = torch.randn(10, E), torch.randn(3, 10)
    out = enc(embeds, betas)
    assert isinstance(out, VoxelEncoderOutput)
    assert out.weight.shape == (3, E) and out.bias.shape == (3,)
    # a shared [K, E] context is the same as the per-voxel [B, K, E] one
    out2 = enc(embeds.expand(3, -1, -1), betas)
    torch.testing.assert_close(out.weight, out2.weight)
    # predict: w . e + b
    imgs = torch.randn(4, E)
    torch.testing.assert_close(out.predict(imgs), out.weight @ imgs.T + out.bias[:, None])


def test_encoder_registers():
    enc = _encoder(num_registers=3)
    assert enc.transformer.registers.shape == (3, INCONTEXT_PRESETS["test"]["encoder"]["hidden"])
    assert enc.head[1].in_features == 3 * INCONTEXT_PRESETS["test"]["encoder"]["hidden"]
    # the registers are what the head reads: changing them changes the output
    embeds, betas = torch.randn(8, E), torch.randn(2, 8)
    before = enc(embeds, betas).weight
    with torch.no_grad():
        enc.transformer.registers.add_(torch.randn_like(enc.transformer.registers))
    assert not torch.allclose(before, enc(embeds, betas).weight)


def test_encoder_is_permutation_invariant_over_context_pairs():
    enc = _encoder()
    embeds, betas = torch.randn(2, 12, E), torch.randn(2, 12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    a, b = enc(embeds, betas), enc(embeds[:, perm], betas[:, perm])
    torch.testing.assert_close(a.weight, b.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.bias, b.bias, atol=1e-5, rtol=1e-5)
    # but it does depend on which response goes with which image
    c = enc(embeds, betas[:, perm])
    assert not torch.allclose(a.weight, c.weight, atol=1e-4)


def test_encoder_padding_mask_equals_shorter_context():
    enc = _encoder()
    embeds, betas = torch.randn(2, 9, E), torch.randn(2, 9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    padded = enc(embeds, betas.masked_fill(~mask, 123.0), mask)
    short = enc(embeds[1:, :6], betas[1:, :6])
    torch.testing.assert_close(padded.weight[1:], short.weight, atol=1e-5, rtol=1e-5)


def test_encoder_errors():
    enc = _encoder()
    with pytest.raises(ValueError, match="betas must be"):
        enc(torch.randn(5, E), torch.randn(5))
    with pytest.raises(ValueError, match="embeds must be"):
        enc(torch.randn(5, E + 1), torch.randn(2, 5))
    with pytest.raises(ValueError, match="at least one valid"):
        enc(torch.randn(5, E), torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        InContextVoxelEncoder(E, hidden=30, heads=4)


def test_encoder_infer_chunks_match_one_pass():
    enc = _encoder()
    embeds, betas = torch.randn(7, E), torch.randn(7, 11)  # [K, V] image-major
    full = enc.infer(embeds, betas, chunk_size=100)
    chunked = enc.infer(embeds, betas, chunk_size=4)
    assert full.weight.shape == (11, E)
    torch.testing.assert_close(full.weight, chunked.weight, atol=1e-5, rtol=1e-5)


def test_stage1_learns_to_recover_w_on_a_toy_problem():
    """Meta-trained on synthetic voxels (response objective), it infers new voxels' w in context."""
    torch.manual_seed(0)
    e = 4
    pool = torch.randn(512, e)
    prior = SyntheticVoxelPrior(torch.zeros(e), torch.eye(e), noise_std=0.05)
    model = InContextVoxelEncoder(e, hidden=32, depth=2, heads=2, num_registers=4)
    test = sample_synthetic_batch(pool, prior, 24, 200, generator=torch.Generator().manual_seed(99))
    before = model.infer(test.embeds, test.beta)
    losses = train_voxel_encoder(model, pool, prior, steps=120, context_range=(8, 16), n_query=8, n_voxels=32,
                                 lr=5e-3, weight_decay=0.0, log=None)  # fmt: skip
    after = model.infer(test.embeds, test.beta)
    rel = lambda w: float(((w - test.weight) ** 2).mean() / test.weight.var())  # noqa: E731
    # guessing the prior mean (0) scores 1.0; least squares on these 24 pairs scores ~0.001
    assert rel(before.weight) > 0.8
    assert rel(after.weight) < 0.3, rel(after.weight)
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20


# --------------------------------------------------------------------------------- stage 2


def test_decoder_shapes_registers_and_merge():
    dec = _decoder(num_registers=8, num_merged=2)
    w, b, beta = torch.randn(20, E), torch.randn(20), torch.randn(3, 20)
    out = dec(w, b, beta)
    assert out.shape == (3, E)
    assert dec.transformer.registers.shape[0] == 8
    hidden = INCONTEXT_PRESETS["test"]["decoder"]["hidden"]
    assert dec.merge[0].in_features == 2 * hidden
    # per-response weights [B, V, E] equal the shared ones
    torch.testing.assert_close(dec(w.expand(3, -1, -1), b.expand(3, -1), beta), out)
    # the output reads the first num_merged register outputs, merged by the MLP
    seen = {}
    handle = dec.transformer.register_forward_hook(lambda m, i, o: seen.setdefault("regs", o))
    out_again = dec(w, b, beta)
    handle.remove()
    assert seen["regs"].shape == (3, 8, hidden)
    torch.testing.assert_close(out_again, dec.out(dec.merge(seen["regs"][:, :2].flatten(1))))
    with pytest.raises(ValueError, match="num_merged"):
        FunctionalInversionDecoder(E, num_registers=4, num_merged=5)


def test_decoder_any_voxel_count_and_voxel_order():
    dec = _decoder()
    w, b, beta = torch.randn(31, E), torch.randn(31), torch.randn(2, 31)
    perm = torch.randperm(31, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dec(w, b, beta), dec(w[perm], b[perm], beta[:, perm]), atol=1e-5, rtol=1e-5)
    assert dec(w[:5], b[:5], beta[:, :5]).shape == (2, E)


def test_decoder_log_length_query_scale():
    """Stage-2 attention multiplies the queries by log(number of valid tokens), padding excluded."""
    import copy

    dec = _decoder()
    blk = dec.transformer.blocks[0]
    d = blk.norm1.normalized_shape[0]
    x = torch.randn(2, 6, d)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False  # the second row has 4 real tokens

    def plain_with_scale(scale: float) -> torch.nn.Module:
        ref = copy.deepcopy(blk)
        ref.length_scaled = False
        with torch.no_grad():  # the query rows of the qkv projection, scaled
            ref.qkv.weight[:d] *= scale
            ref.qkv.bias[:d] *= scale
        return ref

    y = blk(x, valid)
    torch.testing.assert_close(y[:1], plain_with_scale(math.log(6))(x[:1], valid[:1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[1:, :4], plain_with_scale(math.log(4))(x[1:, :4], valid[1:, :4]), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    assert not torch.allclose(y[:1], plain_with_scale(1.0)(x[:1], valid[:1]), atol=1e-4)
    assert dec.transformer.blocks[0].length_scaled and not _encoder().transformer.blocks[0].length_scaled


def test_decoder_mask_ignores_padded_voxels():
    dec = _decoder()
    w, b, beta = torch.randn(2, 10, E), torch.randn(2, 10), torch.randn(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    out = dec(w, b, beta.masked_fill(~mask, 50.0), mask)
    torch.testing.assert_close(out[:1], dec(w[:1, :7], b[:1, :7], beta[:1, :7]), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- loss


def test_identical_embeddings_give_zero_cosine_term():
    x = torch.randn(5, E)
    loss, terms = inversion_loss(x, 3.0 * x)  # cosine ignores the norm
    assert terms["cosine"] == pytest.approx(0.0, abs=1e-6)
    assert float(loss) == pytest.approx(0.1 * terms["infonce"], abs=1e-6)


def test_opposite_embeddings_give_cosine_term_two():
    x = torch.randn(4, E)
    _, terms = inversion_loss(x, -x)
    assert terms["cosine"] == pytest.approx(2.0, abs=1e-6)


def test_infonce_2x2_known_value():
    eye = torch.eye(2)
    # logits [[5, 0], [0, 5]]: each row/column CE = log(1 + e^-5)
    expected = math.log1p(math.exp(-5.0))
    assert float(info_nce(eye, eye, temperature=0.2)) == pytest.approx(expected, rel=1e-6)
    # swapped targets: CE = log(1 + e^5) on both sides
    assert float(info_nce(eye, eye.flip(0), temperature=0.2)) == pytest.approx(math.log1p(math.exp(5.0)), rel=1e-6)
    # asymmetric case: the symmetric loss averages row and column cross-entropies
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.eye(2)
    logits = F.normalize(p, dim=-1) @ t.T / 0.2
    rows = F.cross_entropy(logits, torch.arange(2))
    cols = F.cross_entropy(logits.T, torch.arange(2))
    assert not torch.isclose(rows, cols)
    assert float(info_nce(p, t, 0.2)) == pytest.approx(float(0.5 * (rows + cols)), rel=1e-6)
    total, terms = inversion_loss(p, t)
    cos = 1 - (1 + 1 / math.sqrt(2)) / 2
    assert terms["cosine"] == pytest.approx(cos, rel=1e-6)
    assert float(total) == pytest.approx(cos + 0.1 * float(0.5 * (rows + cols)), rel=1e-6)


def test_loss_errors():
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.eye(2), torch.eye(2), temperature=0.0)
    with pytest.raises(ValueError, match="pred and target"):
        inversion_loss(torch.randn(2, 3), torch.randn(2, 4))


# ---------------------------------------------------------------------------------- sampler


def test_sampler_moments_match_requested_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    prior = SyntheticVoxelPrior(mean, cov, mean_b=0.7, std_b=0.3)
    w, b = prior.sample(40000, generator=g)
    assert w.shape == (40000, 4) and b.shape == (40000,)
    torch.testing.assert_close(w.double().mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(w.double().T), cov, atol=0.12, rtol=0.03)
    assert float(b.mean()) == pytest.approx(0.7, abs=0.01)
    assert float(b.std()) == pytest.approx(0.3, abs=0.01)


def test_sampler_singular_covariance_and_fit_round_trip():
    v = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    cov = v.T @ v  # rank 1: every sample lies on the line through mean along v
    prior = SyntheticVoxelPrior(torch.zeros(3), cov)
    w, _ = prior.sample(500, generator=torch.Generator().manual_seed(1))
    assert float(w[:, 2].abs().max()) < 1e-5
    torch.testing.assert_close(w[:, 1], 2 * w[:, 0], atol=1e-4, rtol=1e-4)
    refit = SyntheticVoxelPrior.fit(w, torch.full((500,), 2.0))
    torch.testing.assert_close(refit.cov_w, cov, atol=0.5, rtol=0.2)
    assert refit.mean_b == pytest.approx(2.0) and refit.std_b == pytest.approx(0.0)


def test_synthetic_batch_follows_the_generative_model():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(300, E) * 5
    prior = SyntheticVoxelPrior(torch.zeros(E), torch.eye(E), mean_b=10.0, std_b=1.0, noise_std=0.1)
    batch = sample_synthetic_batch(pool, prior, 200, 50, generator=g)
    assert batch.embeds.shape == (200, E) and batch.beta.shape == (200, 50)
    torch.testing.assert_close(batch.embeds.norm(dim=-1), torch.ones(200))  # L2-normalised
    resid = batch.beta - batch.embeds @ batch.weight.T  # b is NOT added (upstream)
    assert float(resid.std()) == pytest.approx(0.1, rel=0.05)
    assert abs(float(resid.mean())) < 0.01
    with_b = sample_synthetic_batch(pool, prior, 200, 50, generator=torch.Generator().manual_seed(0), add_bias=True)
    torch.testing.assert_close(with_b.beta - with_b.bias, batch.beta)
    # images are distinct pool rows
    assert len({tuple(r.tolist()) for r in batch.embeds}) == 200


def test_sampler_errors():
    with pytest.raises(ValueError, match="positive semi-definite"):
        SyntheticVoxelPrior(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="symmetric"):
        SyntheticVoxelPrior(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    prior = SyntheticVoxelPrior(torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="prior's size"):
        sample_synthetic_batch(torch.randn(10, 4), prior, 5, 5)
    with pytest.raises(ValueError, match="pool size"):
        sample_synthetic_batch(torch.randn(10, 3), prior, 11, 5)


# ----------------------------------------------------------------------- pipeline, training


def test_stage2_training_reduces_loss_and_pipeline_decodes():
    torch.manual_seed(0)
    pool = torch.randn(256, E)
    prior = SyntheticVoxelPrior(torch.zeros(E), torch.eye(E), noise_std=0.1)
    model = create_incontext("test", E)
    losses = train_inversion_decoder(model.decoder, pool, prior, steps=40, voxel_range=(20, 30), n_images=16,
                                     lr=3e-3, log=None)  # fmt: skip
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    ctx = sample_synthetic_batch(pool, prior, 20, 25, generator=torch.Generator().manual_seed(5))
    out = model(ctx.embeds, ctx.beta, ctx.beta[:3])
    assert out.shape == (3, E)
    with pytest.raises(ValueError, match="context's V"):
        model(ctx.embeds, ctx.beta, torch.randn(3, 24))
    with pytest.raises(ValueError, match="stage 1 has E"):
        InContextDecoder(InContextVoxelEncoder(3, hidden=8, heads=2, depth=1), _decoder())
    with pytest.raises(ValueError, match="unknown preset"):
        create_incontext("huge", E)


def test_stage2_meta_training_through_a_frozen_stage1():
    torch.manual_seed(0)
    pool = torch.randn(128, E)
    prior = SyntheticVoxelPrior(torch.zeros(E), torch.eye(E))
    model = create_incontext("test", E)
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    calls = []
    handle = model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[-2]))
    losses = train_inversion_decoder(
        model.decoder,
        pool,
        prior,
        steps=3,
        voxel_range=(10, 12),
        n_images=8,
        lr=1e-3,
        voxel_encoder=model.encoder,
        context_size=20,
        log=None,
    )
    handle.remove()
    assert len(losses) == 3 and calls and set(calls) == {20}  # stage 1 saw the 20 context images
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, frozen[k])  # and was not trained
    with pytest.raises(ValueError, match="context_size"):
        train_inversion_decoder(
            model.decoder, pool, prior, steps=1, n_images=8, voxel_encoder=model.encoder, context_size=500, log=None
        )


def test_meta_training_on_subject_data():
    """Both stages meta-train on (real or simulated) subjects' arrays: voxels drawn from the subjects."""
    torch.manual_seed(0)
    subjects = [
        SubjectData(torch.randn(60, E), torch.randn(60, 40)),
        SubjectData(torch.randn(50, E), torch.randn(50, 25)),
    ]
    g = torch.Generator().manual_seed(0)
    batch = sample_subject_batch(subjects, 20, 30, generator=g)
    assert batch.weight is None and batch.bias is None
    assert batch.embeds.shape == (20, E) and batch.beta.shape[0] == 20 and batch.beta.shape[1] in (25, 30)
    torch.testing.assert_close(batch.embeds.norm(dim=-1), torch.ones(20))
    # every drawn column is a column of one subject's betas, on the drawn rows
    sub = subjects[0] if batch.beta.shape[1] == 30 else subjects[1]
    rows = [int((sub.embeds / sub.embeds.norm(dim=-1, keepdim=True) - e).abs().sum(1).argmin()) for e in batch.embeds]
    for col in batch.beta.T:
        assert any(torch.allclose(col, sub.betas[rows, j]) for j in range(sub.betas.shape[1]))
    model = create_incontext("test", E)
    l1 = train_voxel_encoder(model.encoder, None, None, subjects=subjects, steps=3, context_range=(10, 20), n_query=8,
                             n_voxels=16, lr=1e-3, log=None)  # fmt: skip
    l2 = train_inversion_decoder(model.decoder, None, None, subjects=subjects, steps=2, voxel_range=(10, 20),
                                 n_images=8, voxel_encoder=model.encoder, context_size=20, lr=1e-3,
                                 log=None)  # fmt: skip
    assert len(l1) == 3 and len(l2) == 2 and all(math.isfinite(x) for x in l1 + l2)
    with pytest.raises(ValueError, match="known encoders"):
        train_voxel_encoder(model.encoder, None, None, subjects=subjects, objective="weights", log=None)
    with pytest.raises(ValueError, match="voxel_encoder"):
        train_inversion_decoder(model.decoder, None, None, subjects=subjects, log=None)
    with pytest.raises(ValueError, match="either an embedding pool"):
        train_voxel_encoder(model.encoder, None, None, steps=1, context_range=(1, 2), n_query=1, log=None)
    with pytest.raises(ValueError, match="same N"):
        SubjectData(torch.randn(5, E), torch.randn(4, 3))


# ----------------------------------------------------------------------------- diagnostics


def _linear_voxels(k: int = 40, e: int = 5, v: int = 7, noise: float = 0.1, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((k, e))
    w = rng.standard_normal((v, e))
    b = rng.standard_normal(v)
    return x, w, b, x @ w.T + b + noise * rng.standard_normal((k, v))


def test_ridge_voxel_encoders_equal_numpy_least_squares():
    import numpy as np

    from decodelab.neuro.incontext import ridge_voxel_encoders

    x, _, _, y = _linear_voxels()
    enc = ridge_voxel_encoders(x, y, alphas=(1e-10,))  # a vanishing penalty: ordinary least squares
    coef = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]  # [E + 1, V]
    np.testing.assert_allclose(enc.weight.numpy(), coef[:-1].T, atol=1e-5)
    np.testing.assert_allclose(enc.bias.numpy(), coef[-1], atol=1e-5)
    # a real penalty: the closed form on centred data, unpenalised intercept
    a = 7.0
    enc = ridge_voxel_encoders(torch.as_tensor(x), torch.as_tensor(y), alphas=(a,))
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = np.linalg.solve(xc.T @ xc + a * np.eye(x.shape[1]), xc.T @ yc).T  # [V, E]
    np.testing.assert_allclose(enc.weight.numpy(), w, atol=1e-5)
    np.testing.assert_allclose(enc.bias.numpy(), y.mean(0) - w @ x.mean(0), atol=1e-5)
    assert enc.alpha.tolist() == [a] * y.shape[1] and enc.loo_mse.shape == (y.shape[1],)


def test_ridge_voxel_encoders_pick_a_penalty_per_voxel_by_leave_one_out():
    import numpy as np

    from decodelab.neuro.incontext import ridge_voxel_encoders

    x, _, _, y = _linear_voxels(k=30, v=2, noise=0.05)
    rng = np.random.default_rng(1)
    y[:, 1] = rng.standard_normal(len(y))  # a voxel with no signal wants the largest penalty
    enc = ridge_voxel_encoders(x, y, alphas=(1e-3, 1e5))
    assert enc.alpha.tolist() == [1e-3, 1e5]
    loo = (y[:, 1] - y[:, 1].mean()) / (1 - 1 / len(y))  # leave-one-out residuals of the mean alone
    assert float(enc.loo_mse[1]) == pytest.approx(float(np.mean(loo**2)), rel=1e-3)
    with pytest.raises(ValueError, match="same K"):
        ridge_voxel_encoders(x, y[:-1])


def test_encoder_correlations_are_per_voxel_pearson():
    import numpy as np

    from decodelab.neuro.incontext import encoder_correlations

    x, w, b, y = _linear_voxels(noise=1.0)
    enc = VoxelEncoderOutput(torch.as_tensor(w).float(), torch.as_tensor(b).float())
    w0 = w.copy()
    w0[0] = 0.0  # a constant prediction: r = 0, not nan
    r = encoder_correlations(enc, torch.as_tensor(x).float(), torch.as_tensor(y)).numpy()
    want = [np.corrcoef(x @ w[v] + b[v], y[:, v])[0, 1] for v in range(len(w))]
    np.testing.assert_allclose(r, want, atol=1e-5)
    flat = VoxelEncoderOutput(torch.as_tensor(w0).float(), torch.as_tensor(b).float())
    assert float(encoder_correlations(flat, torch.as_tensor(x).float(), torch.as_tensor(y))[0]) == 0.0


def test_invert_encoders_is_the_gaussian_posterior_mean():
    from decodelab.neuro.incontext import invert_encoders

    g = torch.Generator().manual_seed(0)
    v, e, m = 9, 4, 5
    w, b = torch.randn(v, e, generator=g, dtype=torch.float64), torch.randn(v, generator=g, dtype=torch.float64)
    d = torch.rand(v, generator=g, dtype=torch.float64) + 0.1
    mu = torch.randn(e, generator=g, dtype=torch.float64)
    a = torch.randn(e, e, generator=g, dtype=torch.float64)
    c = a @ a.T + 0.5 * torch.eye(e, dtype=torch.float64)
    y = torch.randn(m, v, generator=g, dtype=torch.float64)
    got = invert_encoders(VoxelEncoderOutput(w, b), y, d, mu, c, jitter=0.0)
    # the same posterior mean in voxel space: mu + C W^T (W C W^T + D)^-1 (y - b - W mu)
    s = w @ c @ w.T + torch.diag(d)
    want = mu + (c @ w.T @ torch.linalg.solve(s, (y - b - w @ mu).T)).T
    torch.testing.assert_close(got, want)
    # many clean voxels: the image is recovered whatever the prior
    w = torch.randn(400, e, generator=g, dtype=torch.float64)
    truth = torch.randn(m, e, generator=g, dtype=torch.float64)
    got = invert_encoders(VoxelEncoderOutput(w, b[:1].expand(400)), truth @ w.T + b[0], torch.full((400,), 1e-6),
                          torch.zeros(e), torch.eye(e))  # fmt: skip
    torch.testing.assert_close(got, truth, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="positive"):
        invert_encoders(VoxelEncoderOutput(w, b[:1].expand(400)), truth @ w.T, torch.zeros(400), mu, c)


def test_pipeline_is_stage1_then_stage2_and_decode_takes_any_encoders():
    from decodelab.neuro.incontext import ridge_voxel_encoders

    torch.manual_seed(0)
    model = create_incontext("test", E)
    ctx_e, ctx_b, betas = torch.randn(20, E), torch.randn(20, 11), torch.randn(3, 11)
    enc = model.encode_context(ctx_e, ctx_b)
    torch.testing.assert_close(model(ctx_e, ctx_b, betas), model.decode(enc, betas))
    torch.testing.assert_close(enc.weight, model.encoder.infer(F.normalize(ctx_e, dim=-1), ctx_b).weight)
    assert model.decode(ridge_voxel_encoders(F.normalize(ctx_e, dim=-1), ctx_b), betas).shape == (3, E)
    with pytest.raises(ValueError, match="encoders' V"):
        model.decode(enc, betas[:, :5])
