"""The embedded fMRI pipeline on a tiny simulated NSD, driven through its CLI command functions."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from decodelab.cli.neuro_fmri import add_fmri_commands, main
from decodelab.neuro.runs.fmri import derangement, partial_resample, score


def test_commands_are_registered_on_a_parser():
    parser = argparse.ArgumentParser()
    add_fmri_commands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["run-fmri", "--data", "d", "--out", "o", "--strength", "0.5", "--no-rescale"])
    assert args.strength == 0.5 and args.no_rescale and args.subject == 1 and callable(args.func)
    args = parser.parse_args(["simulate-fmri", "--out", "o", "--world", "shapes", "--noise", "2"])
    assert args.world == "shapes" and args.noise == 2.0 and args.subjects == [1, 2]
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate-fmri", "--out", "o", "--world", "coco"])


def test_fit_reconstruct_eval_and_resume(tiny, tmp_path, capsys):
    root, _ = tiny
    out = tmp_path / "run"
    common = ["--data", str(root), "--out", str(out), "--subject", "1"]
    assert main(["fit-fmri", *common]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["n_test"] == 12 and fit["alpha_latents"] > 0
    with np.load(out / "predictions.npz") as z:
        pred, true = z["latents"], z["latents_true"]
        assert pred.shape == true.shape == (12, 8 * 16 * 16)
        # the decoder beats the training mean on held-out images (the latents carry the image)
        assert np.mean((pred - true) ** 2) < np.mean((z["latents_mean"] - true) ** 2)
    assert main(["reconstruct-fmri", *common]) == 0
    with np.load(out / "reconstructions.npz") as z:
        assert z["stage1"].shape == z["stage2"].shape == (12, 32, 32, 3) and z["stage1"].dtype == np.uint8
        assert z["tokens2"].shape == (12, 16, 16) and float(z["strength"]) == 0.75
        assert (z["classes"] >= 0).all() and (z["classes"] < 10).all()
    capsys.readouterr()
    assert main(["eval-fmri", *common]) == 0
    res = json.loads(capsys.readouterr().out)
    for stage in ("stage1", "stage2", "stage1_shuffled", "stage2_shuffled"):
        assert set(res[stage]) >= {"pixcorr", "ssim", "twoway_efficientnet-lite0", "corrdist_efficientnet-lite0"}
        assert 0 <= res[stage]["twoway_efficientnet-lite0"] <= 1
    assert res["stage1"]["pixcorr"] > res["stage1_shuffled"]["pixcorr"]
    assert 0 <= res["decoded_class_accuracy"] <= 1
    from PIL import Image

    assert Image.open(out / "grid.png").size == (2 * 12 * 34, 2 * 3 * 34)  # ground truth + 2 stages, 12 columns
    # resumable: a second run finds every step's output and recomputes nothing
    stamp = (out / "reconstructions.npz").stat().st_mtime_ns
    assert main(["run-fmri", *common]) == 0
    assert json.loads(capsys.readouterr().out)["stage1"] == res["stage1"]
    assert (out / "reconstructions.npz").stat().st_mtime_ns == stamp


def test_reconstruct_needs_the_fit(tiny, tmp_path):
    root, _ = tiny
    with pytest.raises(FileNotFoundError, match="predictions.npz"):
        main(["reconstruct-fmri", "--data", str(root), "--out", str(tmp_path), "--subject", "5"])


def test_partial_resampling_keeps_the_unselected_tokens():
    from decodelab.vision.pipeline import load_pipeline

    pipe = load_pipeline("fmnist-c2i")
    init = torch.randint(0, 512, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    cond = torch.tensor([0, 7])
    assert torch.equal(partial_resample(pipe, cond, init, 0.0), init)
    out = partial_resample(pipe, cond, init, 0.5, seed=3)
    keep = ~(torch.rand((2, 256), generator=torch.Generator().manual_seed(3)) < 0.5)
    assert torch.equal(out.reshape(2, -1)[keep], init.reshape(2, -1)[keep])
    assert (out.reshape(2, -1)[~keep] != init.reshape(2, -1)[~keep]).float().mean() > 0.5
    with pytest.raises(ValueError, match="strength"):
        partial_resample(pipe, cond, init, 1.5)


class _Pixels:
    name = "pixels"

    def __call__(self, x):
        return x.flatten(1)


def test_score_and_shuffled_baseline_on_known_cases():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    perfect = score(gt, gt, _Pixels(), size=16)
    assert perfect["pixcorr"] == pytest.approx(1.0) and perfect["twoway_pixels"] == 1.0
    perm = derangement(6, 0)
    assert not np.any(perm == np.arange(6))
    assert score(gt, gt[perm], _Pixels(), size=16)["pixcorr"] < 0.2


def test_caption_condition_inverts_caption_tokens(text_encoder):
    from decodelab.neuro.runs.fmri import caption_condition, caption_tokens

    caps = [["a red circle"], ["two blue squares below a green triangle"]]
    rows = caption_tokens(text_encoder, caps)  # what the ridge predicts for shapes-t2i
    emb, mask = caption_condition(rows, text_encoder.max_length, text_encoder.dim)
    true_emb, true_mask = text_encoder([c[0] for c in caps])
    assert torch.equal(mask, true_mask) and mask.sum(1).tolist()[0] < mask.sum(1).tolist()[1]
    torch.testing.assert_close(emb, true_emb)
    noisy = rows.copy()
    noisy[:, -1] = [0.2, 99.0]  # a predicted length is rounded and clipped to 1..T
    assert caption_condition(noisy, text_encoder.max_length, text_encoder.dim)[1].sum(1).tolist() == [1, 32]
    with pytest.raises(ValueError, match="values per row"):
        caption_condition(rows[:, 1:], text_encoder.max_length, text_encoder.dim)


def test_best_of_n_keeps_the_candidate_that_matches_the_predictions(tiny, tmp_path, capsys):
    from decodelab.eval.brain import row_correlation
    from decodelab.neuro.runs.fmri import _pipeline, load_fmri_data, luminance, reconstruct_step

    root, _ = tiny
    out = tmp_path / "run"
    common = ["--data", str(root), "--out", str(out), "--subject", "1"]
    assert main(["fit-fmri", *common]) == 0
    data = load_fmri_data(root, 1)
    # the class of every seen image comes from the stim-info 'label' column, named in its first caption
    assert len(data.train_labels) == len(data.train_ids) and (data.train_labels >= 0).all()
    names = [n.lower() for n in _pipeline(data.world, None).info["class_names"]]
    for labels, caps in ((data.train_labels, data.train_captions), (data.test_labels, data.test_captions)):
        assert all(names[c] in cap[0].lower() for c, cap in zip(labels, caps))
    with np.load(out / "predictions.npz") as z:
        assert z["pixels"].shape == (12, 32 * 32) and float(z["alpha_pixels"]) > 0
        target = z["pixels"]
    # each candidate alone (seed + k), then best-of-3: the kept image is the per-row argmax
    singles = []
    for k in range(3):
        run = tmp_path / f"single{k}"
        run.mkdir()
        (run / "predictions.npz").write_bytes((out / "predictions.npz").read_bytes())
        reconstruct_step(run, data, seed=k)
        with np.load(run / "reconstructions.npz") as z:
            singles.append(z["stage2"])
    capsys.readouterr()
    assert main(["reconstruct-fmri", *common, "--candidates", "3"]) == 0
    with np.load(out / "reconstructions.npz") as z:
        scores, chosen, stage2 = z["candidate_scores"], z["selected"], z["stage2"]
        assert int(z["candidates"]) == 3 and str(z["select"]) == "pixels"
    expect = np.stack([row_correlation(luminance(s), target, constant="zero") for s in singles])
    np.testing.assert_allclose(scores, expect, atol=1e-5)
    assert np.array_equal(chosen, expect.argmax(0))
    assert np.array_equal(stage2, np.stack(singles)[chosen, np.arange(12)])
    assert len(set(chosen.tolist())) > 1  # the rows do not all pick the same seed
    capsys.readouterr()
    assert main(["eval-fmri", *common]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["candidates"] == 3 and res["select"] == "pixels"


def test_stage2_inputs_are_what_reconstruct_step_records(tiny, tmp_path):
    # benchmarks/fmri_selection.py starts from stage2_inputs: it must be reconstruct_step's own stage 1 and condition
    from decodelab.neuro.runs.fmri import _pipeline, load_fmri_data, reconstruct_step, stage2_inputs

    root, _ = tiny
    assert main(["fit-fmri", "--data", str(root), "--out", str(tmp_path), "--subject", "1"]) == 0
    data = load_fmri_data(root, 1)
    pipe = _pipeline(data.world, None)
    with np.load(tmp_path / "predictions.npz") as z:
        pred = {k: z[k] for k in z.files}
    for rescale in (True, False):
        reconstruct_step(tmp_path, data, pipeline=pipe, strength=0.0, rescale=rescale, overwrite=True)
        s2 = stage2_inputs(pred, data.world, pipe, rescale=rescale)
        with np.load(tmp_path / "reconstructions.npz") as z:
            assert np.array_equal(z["stage1"], s2.stage1) and z["stage1"].dtype == np.uint8
            assert np.array_equal(z["tokens1"], s2.tokens1.numpy()) and np.array_equal(z["tokens2"], z["tokens1"])
            assert np.array_equal(z["classes"], s2.extra["classes"]) and np.array_equal(z["classes"], s2.cond.numpy())
        assert s2.cond_mask is None and (s2.pred["latents"] is pred["latents"]) is not rescale
    with np.load(tmp_path / "predictions.npz") as z:  # the caller's arrays are not rescaled in place
        assert all(np.array_equal(pred[k], z[k]) for k in z.files)


def test_best_of_n_argument_errors(tiny, tmp_path):
    from decodelab.neuro.runs.fmri import load_fmri_data, reconstruct_step

    root, _ = tiny
    data = load_fmri_data(root, 1)
    with pytest.raises(ValueError, match="candidates"):
        reconstruct_step(tmp_path, data, candidates=0)
    with pytest.raises(ValueError, match="select"):
        reconstruct_step(tmp_path, data, candidates=2, select="clip")
    main(["fit-fmri", "--data", str(root), "--out", str(tmp_path), "--subject", "1"])
    with np.load(tmp_path / "predictions.npz") as z:  # an older fit step wrote no luminance prediction
        old = {k: z[k] for k in z.files if not k.endswith("pixels")}
    np.savez(tmp_path / "predictions.npz", **old)
    with pytest.raises(ValueError, match="luminance"):
        reconstruct_step(tmp_path, data, candidates=2)
