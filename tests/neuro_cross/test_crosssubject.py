"""Cross-subject K-sweep pieces: retrieval scoring, the two ridge baselines, the sweep and its command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from decodelab.cli.neuro_cross import add_crosssubject_commands, main
from decodelab.neuro.runs.crosssubject import aligned_ridge, retrieval_scores, ridge_on_k


def test_retrieval_scores_perfect_and_shifted():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((20, 8))
    assert retrieval_scores(true, true) == {"top1": 1.0, "top5": 1.0, "mean_rank": 0.0}
    shifted = retrieval_scores(np.roll(true, 1, axis=0), true)  # every query points at another image
    assert shifted["top1"] == 0.0 and shifted["mean_rank"] > 0


def _linear_world(seed: int, n: int, e_dim: int = 6, v: int = 40, noise: float = 0.05):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, e_dim))
    a = rng.standard_normal((e_dim, v))
    return e, e @ a + noise * rng.standard_normal((n, v))


def test_ridge_on_k_and_aligned_ridge_decode_a_linear_brain():
    e_h, x_h = _linear_world(1, 90)  # held-out subject: its own voxels and tuning
    others = []
    for seed in (2, 3):
        e_s, x_s = _linear_world(seed, 200, v=50)
        rng = np.random.default_rng(seed)
        e_s = rng.standard_normal(e_s.shape)  # other images than the held-out subject's
        x_s = e_s @ np.random.default_rng(seed + 10).standard_normal((6, 50))
        others.append((x_s, e_s))
    ctx_x, ctx_e, test_x, test_e = x_h[:60], e_h[:60], x_h[60:], e_h[60:]
    direct = retrieval_scores(ridge_on_k(ctx_x, ctx_e, test_x), test_e)
    aligned = retrieval_scores(aligned_ridge(others, ctx_x, ctx_e, test_x), test_e)
    assert direct["top1"] > 0.9 and aligned["top1"] > 0.9  # chance is 1/30
    # with the context shuffled against its embeddings, nothing is left to decode
    bad = retrieval_scores(ridge_on_k(ctx_x, ctx_e[::-1], test_x), test_e)
    assert bad["top1"] < 0.3


def test_commands_are_registered_on_a_parser():
    parser = argparse.ArgumentParser()
    add_crosssubject_commands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["crosssubject", "--data", "d", "--out", "r.json", "--k", "30", "100"])
    assert args.k == [30, 100] and args.heldout == 7 and args.train_subjects == [1, 2, 5] and callable(args.func)
    args = parser.parse_args(["caption", "--data", "d", "--out", "o"])
    assert args.pipeline == "shapes-t2i" and args.prefix == "neuro_captioning"


def test_crosssubject_command_tiny(tiny_fmnist, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    argv = ["crosssubject", "--data", str(tiny_fmnist), "--out", str(out), "--train-subjects", "1", "2",
            "--heldout", "5", "--k", "20", "40", "--steps-encoder", "2", "--steps-pretrain", "2", "--steps-meta", "3",
            "--embed-dim", "8", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    res = json.loads(out.read_text())
    assert printed["rows"] == res["rows"]
    assert [r["K"] for r in res["rows"]] == [20, 40]
    assert res["n_test"] == 12 and res["chance"] == {"top1": 1 / 12, "top5": 5 / 12}
    assert res["embed_dim"] == 8 and res["heldout"] == 5 and set(res["n_voxels"]) == {"1", "2", "5"}
    for row in res["rows"]:
        for method in ("incontext", "ridge_on_k", "aligned_ridge"):
            assert 0.0 <= row[method]["top1"] <= row[method]["top5"] <= 1.0
        assert "stage2_ridge_encoders" not in row and "encoder_r" not in row  # diagnostics are opt-in
    assert "diagnostics" not in res
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).size[0] > 300


def test_crosssubject_rejects_bad_settings(tiny_fmnist, tmp_path):
    from decodelab.neuro.runs.crosssubject import k_sweep

    with pytest.raises(ValueError, match="also a training subject"):
        k_sweep(tiny_fmnist, (1, 2), 2)
    with pytest.raises(ValueError, match="needs that many training images"):
        k_sweep(tiny_fmnist, (1, 2), 5, k_values=(30, 100))
    with pytest.raises(SystemExit):
        main(["crosssubject", "--data", str(tiny_fmnist), "--out", str(tmp_path / "x.txt")])


def test_crosssubject_diagnose_adds_rows_without_changing_the_others(tiny_fmnist, tmp_path, capsys):
    from decodelab.neuro.runs.crosssubject import DIAGNOSTICS

    base = ["crosssubject", "--data", str(tiny_fmnist), "--train-subjects", "1", "2", "--heldout", "5",
            "--k", "20", "40", "--steps-encoder", "2", "--steps-pretrain", "2", "--steps-meta", "3",
            "--embed-dim", "8", "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "plain.json")]) == 0
    assert main([*base, "--out", str(tmp_path / "diag.json"), "--diagnose"]) == 0
    capsys.readouterr()
    plain = json.loads((tmp_path / "plain.json").read_text())
    diag = json.loads((tmp_path / "diag.json").read_text())
    for a, b in zip(plain["rows"], diag["rows"]):
        for method in ("incontext", "ridge_on_k", "aligned_ridge"):
            assert {m: a[method][m] for m in ("top1", "top5")} == {m: b[method][m] for m in ("top1", "top5")}
        for method in DIAGNOSTICS:
            assert 0.0 <= b[method]["top1"] <= b[method]["top5"] <= 1.0
        q = b["encoder_r"]
        for enc in ("incontext", "ridge"):
            assert -1.0 <= q[enc]["median"] <= 1.0 and 0.0 <= q[enc]["frac_positive"] <= 1.0
            assert 0.0 <= q[enc]["w_spread"] <= 1.0 + 1e-9 and 1.0 - 1e-9 <= q[enc]["w_dims"] <= 8.0 + 1e-9
        assert 0.0 < q["noise_ceiling"]["median"] < 1.0  # the simulation writes ncsnr
    assert "not run" in diag["diagnostics"]["stage2_true_encoders"] and diag["diagnostics"]["test_repeats"] == 3.0
    from PIL import Image

    assert Image.open(tmp_path / "diag.png").size[1] > Image.open(tmp_path / "plain.png").size[1]


def test_ncsnr_is_read_in_voxel_order_and_noise_ceiling(tiny_fmnist):
    from decodelab.neuro.runs.crosssubject import load_subjects, noise_ceiling_r
    from decodelab.neuro.simulate_fmri import read_simulation

    sub = load_subjects(tiny_fmnist, [5])[5]
    assert sub.ncsnr.shape == (sub.n_voxels,) and (sub.test_repeats == 3).all()
    assert np.median(sub.ncsnr) == pytest.approx(read_simulation(tiny_fmnist)["per_subject"]["5"]["ncsnr_median"])
    # voxel order: the written ncsnr tracks the ncsnr estimated from the loaders' single trials voxel by voxel
    from decodelab.datasets.nsd import NSDPaths, load_expdesign, load_roi_mask, read_session_betas
    from decodelab.neuro.simulate_fmri import empirical_ncsnr

    paths = NSDPaths(tiny_fmnist, 5)
    sim = read_simulation(tiny_fmnist)
    mask, design = load_roi_mask(paths.roi()), load_expdesign(paths.expdesign)
    per = sim["trials_per_session"]
    trials = np.concatenate([read_session_betas(paths.betas(i + 1), mask, trials=per) for i in range(sim["sessions"])])
    image = design.subjectim[4][design.masterordering[: len(trials)] - 1]
    assert np.corrcoef(sub.ncsnr, empirical_ncsnr(trials, image))[0, 1] > 0.5
    assert noise_ceiling_r(np.array([1.0, 0.0]), 3) == pytest.approx([np.sqrt(0.75), 0.0])
