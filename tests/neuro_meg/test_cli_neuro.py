"""``decodelab neuro simulate | fit-meg | eval-meg | reconstruct`` end to end on a tiny simulation."""

from __future__ import annotations

import json

from decodelab.cli import main


def test_neuro_meg_commands_end_to_end(tmp_path, capsys):
    sim, run, ev = tmp_path / "sim", tmp_path / "run", tmp_path / "eval"
    assert main(["neuro", "simulate", "--modality", "meg", "--out", str(sim), "--n-images", "60", "--n-test", "8",
                 "--n-sessions", "2", "--n-subjects", "1", "--snr", "0.5"]) == 0  # fmt: skip
    assert (sim / "preprocessed_P1-epo.fif").is_file() and (sim / "world.npz").is_file()
    assert main(["neuro", "fit-meg", "--data", str(sim), "--out", str(run), "--no-progress", "preset=test",
                 "steps=3", "batch_size=8", "warmup=1"]) == 0  # fmt: skip
    assert (run / "final" / "model.safetensors").is_file() and (run / "card.json").is_file()
    assert main(["neuro", "eval-meg", "--data", str(sim), "--model", str(run), "--out", str(ev)]) == 0
    res = json.loads((ev / "results.json").read_text())
    assert res["linear"]["summary"]["small.chance.top5"] == 5 / 8
    assert "small.meg_to_image.top5" in res["brain_module.clip"]["summary"]
    assert set(res["time_resolved"]) == {"low", "semantic"} and res["simulated_latencies"]["semantic"] == 0.4
    for png in ("retrieval.png", "time_resolved.png"):
        assert (ev / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["neuro", "reconstruct", "--modality", "meg", "--data", str(sim), "--out", str(ev),
                 "--n-images", "2"]) == 0  # fmt: skip
    rec = json.loads(capsys.readouterr().out)
    assert rec["n_images"] == 2 and rec["chance"] == 0.1 and 0 <= rec["reconstruction_class_accuracy"] <= 1
    assert (ev / "reconstructions_brain_module.png").is_file()
    # noise normalisation: linear only with the flag; a run trained without it refuses it
    ev2 = tmp_path / "eval_nn"
    assert main(["neuro", "eval-meg", "--data", str(sim), "--out", str(ev2), "--noise-normalization",
                 "--no-time-resolved"]) == 0  # fmt: skip
    assert json.loads((ev2 / "results.json").read_text())["noise_normalization"] is True
    assert main(["neuro", "eval-meg", "--data", str(sim), "--model", str(run), "--out", str(ev2),
                 "--noise-normalization"]) == 2  # fmt: skip
    assert "trained without noise normalisation" in capsys.readouterr().err


def test_neuro_errors_are_one_line(tmp_path, capsys):
    assert main(["neuro", "eval-meg", "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "decodelab neuro eval-meg: error:" in err and "preprocessed_P" in err
    assert main(["neuro", "reconstruct", "--modality", "meg", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "eval-meg first" in capsys.readouterr().err
