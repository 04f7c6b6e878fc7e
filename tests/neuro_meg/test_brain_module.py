"""The MEG brain module, block by block, and its loss."""

from __future__ import annotations

import math

import pytest
import torch

from decodelab.datasets.things_meg import ctf275_channel_names, ctf275_sensor_positions
from decodelab.neuro.meg import (
    BRAIN_MODULE_PRESETS,
    BrainModule,
    BrainModuleLoss,
    BrainModuleOutput,
    ConvStack,
    FourierEmbedding,
    ProjectionHead,
    SpatialAttention,
    SubjectLayer,
    TemporalAggregation,
    brain_module_parameter_count,
    clip_loss,
    create_brain_module,
    sensor_dropout_mask,
)

POS = torch.tensor(ctf275_sensor_positions(ctf275_channel_names()[:40]), dtype=torch.float32)  # [40, 2]


def test_fourier_embedding_values_and_size_check():
    emb = FourierEmbedding(dim=8, margin=0.0)  # 2 x 2 frequencies
    assert emb.n_freqs == 2
    out = emb(torch.tensor([[0.25, 0.5]]))
    assert out.shape == (1, 8)
    # frequencies (kx, ky) in order (0,0), (0,1), (1,0), (1,1): phases 0, pi, pi/2, 3pi/2
    phases = torch.tensor([0.0, math.pi, math.pi / 2, 3 * math.pi / 2])
    torch.testing.assert_close(out[0], torch.cat([phases.cos(), phases.sin()]), atol=1e-6, rtol=0)
    assert FourierEmbedding(2048).n_freqs == 32
    with pytest.raises(ValueError, match="2 \\* n\\^2"):
        FourierEmbedding(100)


def test_spatial_attention_is_a_softmax_over_input_channels():
    torch.manual_seed(0)
    att = SpatialAttention(out_channels=6, pos_dim=32, dropout_radius=0.2).eval()
    x = torch.randn(3, 40, 11)
    w = att.attention_weights(POS.expand(3, -1, -1))
    assert w.shape == (3, 6, 40) and (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 6))
    torch.testing.assert_close(att(x, POS), torch.einsum("boc,bct->bot", w, x))
    # the weights are a function of positions: permuting the sensors with their positions changes nothing
    perm = torch.randperm(40)
    torch.testing.assert_close(att(x[:, perm], POS[perm]), att(x, POS), atol=1e-5, rtol=1e-5)
    # a masked sensor gets weight exactly 0 and the rest still sums to 1
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, :5] = False
    wm = att.attention_weights(POS.expand(3, -1, -1), mask)
    assert (wm[1, :, :5] == 0).all() and (wm[0] > 0).all()
    torch.testing.assert_close(wm.sum(-1), torch.ones(3, 6))
    with pytest.raises(ValueError, match="positions"):
        att(x, POS[:30])


def test_sensor_dropout_only_in_training_and_inside_the_radius():
    pos = POS.expand(2, -1, -1)
    centres = pos[:, 0, :].clone()  # centred on sensor 0
    keep = sensor_dropout_mask(pos, centres, 0.2)
    dist = (pos - centres[:, None]).norm(dim=-1)
    assert torch.equal(keep, dist >= 0.2) and not keep[:, 0].any()
    assert sensor_dropout_mask(pos, centres, 10.0).all()  # a row never loses every sensor

    torch.manual_seed(0)
    att = SpatialAttention(out_channels=4, pos_dim=32, dropout_radius=0.3)
    att.train()
    w = att.attention_weights(POS.expand(64, -1, -1))
    assert (w == 0).any(dim=(1, 2)).float().mean() > 0.5  # most samples lose some sensors
    att.eval()
    assert (att.attention_weights(POS.expand(64, -1, -1)) > 0).all()


def test_subject_layer_picks_each_subjects_matrix():
    layer = SubjectLayer(3, 4)
    with torch.no_grad():
        layer.weight[1] = 2 * torch.eye(4)
        layer.weight[2] = torch.eye(4)[[1, 2, 3, 0]]  # out[d] = x[c] where W[c, d] = 1
    x = torch.randn(3, 4, 5)
    out = layer(x, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], 2 * x[1])
    torch.testing.assert_close(out[2], x[2][[3, 0, 1, 2]])
    assert layer.weight.numel() == 3 * 16
    with pytest.raises(ValueError, match="subject indices"):
        layer(x, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="init"):
        SubjectLayer(2, 4, init="zeros")


def test_conv_stack_dilations_glu_residual_and_receptive_field():
    torch.manual_seed(0)
    stack = ConvStack(5, hidden=8, depth=6, kernel=3, dilation_period=3, glu_every=2).eval()
    assert stack.dilations == [1, 2, 4, 1, 2, 4]
    assert [b.glu is not None for b in stack.blocks] == [False, True, False, True, False, True]
    assert [b.residual for b in stack.blocks] == [False] + [True] * 5
    x = torch.randn(2, 5, 64, requires_grad=True)
    y = stack(x)
    assert y.shape == (2, 8, 64)
    y[0, :, 32].sum().backward()
    touched = (x.grad[0].abs().sum(0) > 0).nonzero().flatten()
    rf = stack.receptive_field
    assert rf == 1 + 2 * (14 + 3)
    assert touched.min() >= 32 - rf // 2 and touched.max() <= 32 + rf // 2
    assert touched.max() - touched.min() + 1 == rf  # every tap reaches the input
    with pytest.raises(ValueError, match="odd"):
        ConvStack(5, kernel=4)


def test_temporal_aggregation_and_heads():
    agg = TemporalAggregation(7)
    with torch.no_grad():
        agg.linear.weight.zero_()
        agg.linear.weight[0, 3] = 1.0
        agg.linear.bias.fill_(0.5)
    x = torch.randn(2, 4, 7)
    torch.testing.assert_close(agg(x), x[..., 3] + 0.5)
    torch.testing.assert_close(TemporalAggregation(7, "mean")(x), x.mean(-1))
    with pytest.raises(ValueError, match="7 samples"):
        agg(torch.randn(2, 4, 8))
    head = ProjectionHead(6, 3)
    z = torch.randn(4, 6)
    assert head(z).shape == (4, 3)
    torch.testing.assert_close(head(3 * z + 1), head(z), atol=1e-4, rtol=1e-4)  # LayerNorm comes first
    assert sum(p.numel() for p in head.parameters()) == 2 * 6 + 6 * 3 + 3


def _tiny(**kw) -> BrainModule:
    return create_brain_module("test", POS, 10, n_subjects=2, n_times=25, **kw)


def test_brain_module_shapes_parameter_count_and_backward():
    torch.manual_seed(0)
    model = _tiny(dropout=0.1)
    x, subject = torch.randn(4, 40, 25), torch.tensor([0, 1, 0, 1])
    out = model(x, subject)
    assert isinstance(out, BrainModuleOutput)
    assert out.clip.shape == (4, 10) and out.mse.shape == (4, 10) and out.latent.shape == (4, 24)
    n = sum(p.numel() for p in model.parameters())
    assert n == brain_module_parameter_count(10, n_subjects=2, n_times=25, **BRAIN_MODULE_PRESETS["test"])
    full = brain_module_parameter_count(768, n_subjects=4)
    assert full == 11_700_376  # the number in brain_module's docstring
    loss, parts = BrainModuleLoss(0.5)(out, torch.randn(4, 10))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert set(parts) == {"clip", "mse"}
    with pytest.raises(ValueError, match="subject indices"):
        model(x, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="unknown brain module preset"):
        create_brain_module("huge", POS, 10)


def test_brain_module_randomness_only_in_training():
    torch.manual_seed(0)
    model = _tiny(dropout=0.3, dropout_input=0.2)
    x = torch.randn(3, 40, 25)
    model.eval()
    a, b = model(x).clip, model(x).clip
    torch.testing.assert_close(a, b)
    model.train()
    c, d = model(x).clip, model(x).clip
    assert not torch.allclose(c, d)
    # with every source of randomness off, train mode is deterministic too (BatchNorm batch stats aside)
    quiet = _tiny(sensor_dropout=0.0).train()
    torch.testing.assert_close(quiet(x).clip, quiet(x).clip)


def test_registry_and_save_load_round_trip(tmp_path):
    from decodelab.hub import load_pretrained
    from decodelab.registry import MODELS

    assert {"brain_module_meg", "test_brain_module"} <= set(MODELS.list(kind="brain-encoder"))
    torch.manual_seed(0)
    model = MODELS.create("test_brain_module", positions=POS.numpy(), out_dim=10, n_subjects=2, n_times=25).eval()
    x, subject = torch.randn(2, 40, 25), torch.tensor([1, 0])
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, BrainModule) and loaded.config["n_subjects"] == 2
    torch.testing.assert_close(loaded(x, subject).clip, model(x, subject).clip)
    torch.testing.assert_close(loaded.positions, POS)


def test_clip_loss_known_values_and_combined_loss():
    target = torch.eye(4)
    assert clip_loss(50 * target, target) < 1e-6  # each prediction points at its own image
    assert clip_loss(torch.zeros(4, 4), target).item() == pytest.approx(math.log(4))  # uniform scores
    assert clip_loss(torch.ones(4, 4), target).item() == pytest.approx(math.log(4))
    # candidates are L2-normalised: rescaling the targets changes nothing
    pred = torch.randn(4, 4)
    torch.testing.assert_close(clip_loss(pred, 7 * target), clip_loss(pred, target))
    with pytest.raises(ValueError, match=r"\[B, F\]"):
        clip_loss(pred, torch.randn(3, 4))
    out = BrainModuleOutput(clip=pred, mse=torch.zeros(4, 4), latent=torch.zeros(4, 2))
    c, m = clip_loss(pred, target).item(), 0.25  # mse of zeros against eye(4)
    assert BrainModuleLoss(1.0)(out, target)[0].item() == pytest.approx(c)
    assert BrainModuleLoss(0.0)(out, target)[0].item() == pytest.approx(m)
    assert BrainModuleLoss(0.3)(out, target)[0].item() == pytest.approx(0.3 * c + 0.7 * m)
    with pytest.raises(ValueError, match="lam"):
        BrainModuleLoss(1.5)
