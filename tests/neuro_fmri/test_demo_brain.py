"""``decodelab demo``'s brain-decoding section on a small simulated subject."""

from __future__ import annotations

import json

import pytest


def test_demo_brain_section_decodes_a_simulated_subject(tmp_path, monkeypatch) -> None:
    import decodelab.cli.demo as demo
    from decodelab.cli import main

    monkeypatch.setattr(demo, "BRAIN_N_TRAIN", 40)
    monkeypatch.setattr(demo, "BRAIN_N_TEST", 12)
    monkeypatch.setattr(demo, "BRAIN_TRIALS_PER_SESSION", 52)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--model", "test-c2i", "--num-images", "2", "--decoders", "ar",
            "--no-restoration"]  # fmt: skip
    assert main(argv) == 0
    brain = json.loads((out / "summary.json").read_text())["brain"]
    assert "skipped" not in brain and brain["n_test"] == 12
    assert 0.2 < brain["ncsnr_median"] < 0.5  # NSD's calibrated level
    m = brain["metrics"]
    assert set(m) == {"stage 1 (tokenizer latents)", "stage 2 (fmnist-c2i resampling)", "shuffled pairing (stage 2)"}
    assert m["stage 1 (tokenizer latents)"]["pixcorr"] > m["shuffled pairing (stage 2)"]["pixcorr"]
    page = (out / "index.html").read_text()
    assert "Brain decoding (simulated fMRI)" in page and "brain_grid.png" in page
    assert (out / "brain_grid.png").is_file()


def test_demo_brain_section_is_skipped_with_the_reason(tmp_path, monkeypatch) -> None:
    import decodelab.cli.demo as demo
    import decodelab.neuro.simulate_fmri as sim

    def missing(*args, **kwargs):
        raise FileNotFoundError("Fashion-MNIST not found at /nowhere: apt-get install dataset-fashion-mnist")

    monkeypatch.setattr(sim, "simulate_nsd", missing)
    summary, section = demo.brain_section(tmp_path)
    assert "dataset-fashion-mnist" in summary["skipped"] and "skipped" in section
    with pytest.raises(KeyError):
        summary["metrics"]
