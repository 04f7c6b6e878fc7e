"""Every user-caused error ends in one line on stderr and exit code 2; ``--debug`` / ``DECODELAB_DEBUG=1``
show the traceback instead."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import decodelab
from decodelab.cli import main


def _rgb(path: Path, size: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Files the cases refer to: a derainer, a GPT folder, images, a rain folder, a pipeline."""
    torch.manual_seed(0)
    derainer = decodelab.create_model("test_mcwnet").save_pretrained(tmp_path / "derainer")
    gpt = decodelab.create_model("test_gpt").save_pretrained(tmp_path / "gpt")
    img = _rgb(tmp_path / "img.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    rain = tmp_path / "rain"
    for i in range(3):
        _rgb(rain / f"rain-{i}.png", seed=i)
        _rgb(rain / f"norain-{i}.png", seed=i + 5)
    pipe = decodelab.load_pipeline("test-c2i").save_pretrained(tmp_path / "pipe")
    (pipe / "pipeline.json").write_text("{ not json")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "x.png").write_bytes(b"garbage")
    _rgb(tmp_path / "target" / "x.png")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    tiny = {"task": "derain", "name": "tiny", "model": {"name": "test_mcwnet"},
            "data": {"name": str(rain), "crop": 16}, "steps": 1, "batch_size": 1, "final_eval": False}  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return {"tmp": str(tmp_path), "derainer": str(derainer), "gpt": str(gpt), "img": str(img),
            "garbage": str(garbage), "rain": str(rain), "pipe": str(pipe)}  # fmt: skip


GEN = ["generate", "--model", "test-c2i", "--class-id", "1", "--out", "{tmp}/gen"]
SJD = [*GEN, "--decoder", "sjd"]
CASES = {
    # type-checked decoder arguments: "abc" and 2.5 are errors, not truncations
    "window=abc": ([*SJD, "--decoder-arg", "window=abc"], "window must be an integer"),
    "window=2.5": ([*SJD, "--decoder-arg", "window=2.5"], "window must be an integer, got 2.5"),
    "coupled window=2.5": ([*GEN, "--decoder", "sjd_coupled", "--decoder-arg", "window=2.5"], "window"),
    "coupled unknown arg": ([*GEN, "--decoder", "sjd_coupled", "--decoder-arg", "windw=3"], "valid arguments"),
    "ragged=maybe": ([*SJD, "--decoder-arg", "ragged=maybe"], "ragged must be a boolean"),
    "temperature nan": ([*GEN, "--temperature", "nan"], "temperature must be a finite number"),
    "cfg inf": ([*GEN, "--cfg-scale", "inf"], "cfg_scale must be a finite number"),
    "top-p nan": ([*GEN, "--top-p", "nan"], "top_p"),
    "out is a file": (["generate", "--model", "test-c2i", "--class-id", "1", "--out", "{tmp}/a_file"], "a_file"),
    "corrupt pipeline.json": (["generate", "--model", "{pipe}", "--class-id", "1", "--out", "{tmp}/g"],
                              "pipeline.json"),
    "pt file as model": (["generate", "--model", "{tmp}/ckpt.pt", "--class-id", "1", "--out", "{tmp}/g"],
                         "read_torch_checkpoint"),
    # derain
    "derain garbage image": (["derain", "{garbage}", "--out", "{tmp}/o", "--model", "{derainer}"], "could not read"),
    "derain threads 0": (["derain", "{img}", "--out", "{tmp}/o", "--model", "{derainer}", "--threads", "0"],
                         "--threads must be >= 1"),
    "derain gpt model": (["derain", "{img}", "--out", "{tmp}/o", "--model", "{gpt}"], "not a deraining model"),
    "derain device nope": (["derain", "{img}", "--out", "{tmp}/o", "--model", "{derainer}", "--device", "nope"],
                           "not a torch device"),
    "derain out is a file": (["derain", "{img}", "--out", "{tmp}/a_file", "--model", "{derainer}"], "a_file"),
    "eval derain max-images -1": (["eval", "derain", "--model", "{derainer}", "--data", "{rain}",
                                   "--max-images", "-1"], "--max-images must be >= 1"),
    "eval derain max-images 0": (["eval", "derain", "--model", "{derainer}", "--data", "{rain}",
                                  "--max-images", "0"], "--max-images must be >= 1"),
    # continuous models
    "eval lsr num-images 0": (["eval", "lsr", "--model", "bicubic", "--num-images", "0"], "--num-images must be >= 1"),
    "upscale garbage": (["upscale", "{garbage}", "--scale", "2", "--out", "{tmp}/o.png"], "could not read"),
    # eval psnr reads with PIL directly: an unidentifiable image is an OSError
    "eval psnr garbage": (["eval", "psnr", "--pred", "{tmp}/pred", "--target", "{tmp}/target",
                           "--json", "{tmp}/q.json"], "x.png"),
}  # fmt: skip


def _run(argv: list[str], env: dict[str, str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([a.format(**env) for a in argv])
    return rc, capsys.readouterr().err


def _assert_one_clear_line(rc: int, err: str, expect: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(r"decodelab [a-z ]+: error: ", lines[0]), lines[0]
    assert expect in lines[0], lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_line_and_exit_2(case: str, env, capsys) -> None:
    argv, expect = CASES[case]
    _assert_one_clear_line(*_run(argv, env, capsys), expect)


def test_permission_error_on_an_unwritable_output(env, capsys, monkeypatch) -> None:
    # Tests may run as root, for whom a read-only folder is writable: simulate the refusal of the OS.
    def refuse(self, fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image.Image, "save", refuse)
    rc, err = _run(["derain", "{img}", "--out", "{tmp}/ro", "--model", "{derainer}"], env, capsys)
    _assert_one_clear_line(rc, err, "Permission denied")
    rc, err = _run(["upscale", "{img}", "--scale", "2", "--out", "{tmp}/ro.png"], env, capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available on this machine")
def test_cuda_device_without_cuda(env, capsys) -> None:
    rc, err = _run(["derain", "{img}", "--out", "{tmp}/o", "--model", "{derainer}", "--device", "cuda"], env, capsys)
    _assert_one_clear_line(rc, err, "CUDA is not available")


def test_debug_flag_and_environment_show_the_traceback(env, capsys, monkeypatch) -> None:
    argv = ["derain", "{tmp}/missing.png", "--out", "{tmp}/o"]
    _assert_one_clear_line(*_run(argv, env, capsys), "input not found")
    with pytest.raises(FileNotFoundError, match="input not found"):
        main(["--debug", *[a.format(**env) for a in argv]])
    monkeypatch.setenv("DECODELAB_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="input not found"):
        main([a.format(**env) for a in argv])
    monkeypatch.setenv("DECODELAB_DEBUG", "0")
    _assert_one_clear_line(*_run(argv, env, capsys), "input not found")


def test_no_message_names_a_function_that_does_not_exist() -> None:
    import importlib

    src = Path(decodelab.__file__).parent
    for path in src.rglob("*.py"):
        for dotted in set(re.findall(r"decodelab(?:\.[A-Za-z_]\w*)+", path.read_text())):
            if "__main__" in dotted:
                continue
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attr in parts[i:]:
                    assert hasattr(obj, attr), f"{path.name} names {dotted}, which does not exist"
                    obj = getattr(obj, attr)
                break


def test_decoder_arguments_are_type_checked() -> None:
    from decodelab.speculative import create_decoder

    assert create_decoder("sjd", relax_delta=1).relax_delta == 1.0 and create_decoder("sjd", window=3).window == 3
    for bad in ({"window": 2.5}, {"window": "abc"}, {"window": True}, {"ragged": 1}, {"relax_delta": float("nan")},
                {"init": 3}):  # fmt: skip
        with pytest.raises(ValueError, match="must be"):
            create_decoder("sjd", **bad)
    with pytest.raises(ValueError, match="window must be an integer"):
        create_decoder("sjd_coupled", window=2.5)


# ------------------------------------------------------------- bench, train configs, eval psnr


@pytest.mark.parametrize("flag", ["--num-images", "--repeats"])
def test_bench_counts_must_be_positive(flag: str, env, capsys) -> None:
    argv = ["bench", "decode", "--model", "test-c2i", "--decoders", "ar", "--num-images", "2", "--repeats", "1"]
    argv[argv.index(flag) + 1] = "0"
    _assert_one_clear_line(*_run(argv, env, capsys), f"{flag} must be >= 1")


def test_train_refuses_a_nan_learning_rate(env, capsys) -> None:
    argv = ["train", "--config", "{tmp}/tiny.yaml", "--out", "{tmp}/run", "--no-progress", "lr=nan"]
    _assert_one_clear_line(*_run(argv, env, capsys), "lr")


def test_eval_psnr_does_not_write_into_pred(tmp_path, capsys) -> None:
    _rgb(tmp_path / "pred" / "a.png", seed=0)
    _rgb(tmp_path / "target" / "a.png", seed=1)
    assert main(["eval", "psnr", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target")]) == 0
    assert not (tmp_path / "pred" / "quality.json").exists()
    js = tmp_path / "q.json"
    assert main(["eval", "psnr", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target"),
                 "--json", str(js)]) == 0  # fmt: skip
    assert json.loads(js.read_text())["settings"]["num_images"] == 1


def test_two_trainings_into_one_folder_do_not_interleave(env, capsys) -> None:
    """A second ``decodelab train`` into a folder another live run holds stops with the holder's pid."""
    from decodelab.locks import FolderLock

    out = Path(env["tmp"]) / "run_locked"
    with FolderLock(out):  # another run holds the folder
        argv = ["train", "--config", "{tmp}/tiny.yaml", "--out", str(out), "--no-progress"]
        _assert_one_clear_line(*_run(argv, env, capsys), f"is in use by pid {os.getpid()}")
        assert not (out / "log.jsonl").exists()
    assert main(["train", "--config", env["tmp"] + "/tiny.yaml", "--out", str(out), "--no-progress"]) == 0
    assert not (out / ".lock").exists()  # released when the run ends
