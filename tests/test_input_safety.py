"""Hostile and careless input: outputs never destroy inputs, resources stay bounded, reads are never
silently wrong (16-bit and other image modes, EXIF orientation, checkpoint dtypes, non-finite JSON)."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import decodelab
from decodelab.cli import main
from decodelab.datasets.sr import read_image
from decodelab.hub import CONFIG_NAME, WEIGHTS_NAME, CheckpointMismatchError, load_pretrained, load_state_dict_strict
from decodelab.speculative import SamplingConfig, create_decoder


def _rgb(path: Path, h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (8-bit RGB) followed by a tiny, truncated IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _strict_json(text: str):
    def refuse(token: str):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def derainer(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return decodelab.create_model("test_mcwnet").save_pretrained(tmp_path / "derainer")


# ------------------------------------------------------------------------ 2. outputs never destroy inputs
def test_derain_into_its_own_folder_refuses_to_overwrite_the_inputs(tmp_path, derainer, capsys) -> None:
    folder = tmp_path / "photos"
    _rgb(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    assert main(["derain", str(folder), "--out", str(folder), "--model", str(derainer)]) == 2
    err = capsys.readouterr().err
    assert "overwrite its input" in err and "--overwrite" in err
    assert (folder / "a.png").read_bytes() == before
    # asked for explicitly, deraining in place is allowed
    assert main(["derain", str(folder), "--out", str(folder), "--model", str(derainer), "--overwrite"]) == 0
    assert (folder / "a.png").read_bytes() != before


def test_derain_gives_every_input_its_own_output(tmp_path, derainer) -> None:
    folder = tmp_path / "photos"
    for i, ext in enumerate(("png", "jpg", "bmp", "tif")):
        _rgb(folder / f"a.{ext}", seed=i)
    _rgb(tmp_path / "other" / "a.png", seed=9)  # the same file name in another folder
    out = tmp_path / "out"
    argv = ["derain", str(folder), str(tmp_path / "other" / "a.png"), "--out", str(out), "--model", str(derainer)]
    assert main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"a_bmp.png", "a_jpg.png", "a_tif.png", "photos_a_png.png", "other_a_png.png"}


def test_output_names_are_unique_and_order_independent() -> None:
    from decodelab.cli.derain import output_names

    files = [Path("x/a.png"), Path("x/a.jpg"), Path("y/a.png"), Path("x/b.png")]
    names = output_names(files)
    assert len(set(names)) == len(files)
    assert dict(zip(map(str, files), names)) == dict(zip(map(str, files[::-1]), output_names(files[::-1])))
    assert names[3] == "b.png"  # no clash: the plain name
    with pytest.raises(ValueError, match="same output file"):
        output_names([Path("x/a.png"), Path("x/A.png"), Path("x/a.PNG")])


def test_upscale_refuses_to_replace_its_input(tmp_path, capsys) -> None:
    from decodelab.vision.lsr import create_lsr_model

    torch.manual_seed(0)
    model = create_lsr_model("test_gblsr_sr").save_pretrained(tmp_path / "sr")
    img = tmp_path / "in.png"
    _rgb(img)
    before = img.read_bytes()
    assert main(["upscale", str(img), "--scale", "2", "--out", str(img), "--model", str(model)]) == 2
    assert "is the input image" in capsys.readouterr().err and img.read_bytes() == before
    assert main(["upscale", str(img), "--scale", "2", "--out", str(img), "--model", str(model), "--overwrite"]) == 0
    assert Image.open(img).size == (20, 24)


# ------------------------------------------------------------------------ 3. bounded resources
@pytest.mark.parametrize("name", ["sjd", "sjd_coupled", "jacobi"])
@pytest.mark.parametrize("max_batch", [None, 2])
def test_decoder_window_is_clamped_to_the_image(name: str, max_batch: int | None) -> None:
    torch.manual_seed(3)
    m = decodelab.create_model("test_gpt").eval()
    torch.nn.init.normal_(m.output.weight, 0.0, 0.6)
    widths: list[int] = []
    for method in ("decode_step", "refill_step"):
        original = getattr(m, method)

        def spy(tokens, *args, _original=original, **kwargs):
            widths.append(tokens.shape[1])
            return _original(tokens, *args, **kwargs)

        setattr(m, method, spy)
    N = m.num_tokens
    s = SamplingConfig(temperature=0.0 if name == "jacobi" else 1.0, cfg_scale=2.0)
    cond = torch.tensor([0, 1, 2, 5, 8])

    def run(window: int) -> torch.Tensor:
        dec = create_decoder(name, window=window)
        return dec(m, cond, sampling=s, generator=torch.Generator().manual_seed(0), max_batch=max_batch).tokens

    ref = run(N)
    for window in (N + 1, 40, 1000):
        widths.clear()
        assert torch.equal(run(window), ref), window
        assert widths and max(widths) <= N, (window, max(widths))


def test_input_size_is_checked_from_the_header_before_decoding(tmp_path) -> None:
    from decodelab.datasets.sr import MAX_INPUT_PIXELS, image_size

    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)  # PIL's own guard raises on this one
    with pytest.raises(ValueError, match="over the input limit"):
        read_image(bomb, max_pixels=MAX_INPUT_PIXELS)
    big = _png_header_only(tmp_path / "big.png", 12000, 12000)  # 144 MP: under PIL's guard, over ours
    with pytest.raises(ValueError, match=r"12000x12000 = 144,000,000 pixels according to its header"):
        read_image(big, max_pixels=MAX_INPUT_PIXELS)
    assert image_size(big) == (12000, 12000)
    with pytest.raises(ValueError, match="could not read"):  # with the limit raised, the truncated data shows
        read_image(big, max_pixels=200_000_000)


@pytest.mark.parametrize(
    "argv",
    [
        ["derain", "{img}", "--out", "{tmp}/o"],
        ["upscale", "{img}", "--scale", "2", "--out", "{tmp}/o.png"],
        ["reconstruct", "{img}", "--out", "{tmp}/o.png"],
    ],
    ids=["derain", "upscale", "reconstruct"],
)
def test_commands_refuse_huge_inputs_from_the_header(tmp_path, argv, capsys) -> None:
    img = _png_header_only(tmp_path / "huge.png", 30000, 30000)
    argv = [a.format(img=img, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--max-input-pixels" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_input_limits_are_documented_and_overridable(tmp_path, capsys, derainer) -> None:
    MAX_INPUT_PIXELS = 64_000_000  # decodelab.datasets.sr.MAX_INPUT_PIXELS
    for argv, default in ((["derain"], MAX_INPUT_PIXELS), (["upscale"], MAX_INPUT_PIXELS),
                          (["reconstruct"], 16_000_000), (["eval", "derain"], MAX_INPUT_PIXELS),
                          (["eval", "lsr"], MAX_INPUT_PIXELS)):  # fmt: skip
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--max-input-pixels" in text and f"(default: {default})" in text, argv
    img = tmp_path / "x.png"
    _rgb(img, 24, 24)
    out = tmp_path / "o"
    assert main(["derain", str(img), "--out", str(out), "--model", str(derainer), "--max-input-pixels", "500"]) == 2
    assert "over the input limit of 500 pixels" in capsys.readouterr().err
    assert main(["derain", str(img), "--out", str(out), "--model", str(derainer), "--max-input-pixels", "576"]) == 0


def test_eval_commands_check_dataset_image_sizes(tmp_path, derainer, capsys) -> None:
    rain = tmp_path / "rain"
    for i in range(2):
        _rgb(rain / f"rain-{i}.png", 16, 16, seed=i)
        _rgb(rain / f"norain-{i}.png", 16, 16, seed=i + 10)
    assert main(["eval", "derain", "--model", str(derainer), "--data", str(rain), "--max-input-pixels", "100"]) == 2
    assert "over the input limit of 100 pixels" in capsys.readouterr().err
    hr = tmp_path / "Mini" / "HR"
    _rgb(hr / "im0.png", 24, 20)
    argv = ["eval", "lsr", "--model", "bicubic", "--data", str(tmp_path / "Mini"), "--scales", "2"]
    assert main([*argv, "--max-input-pixels", "100"]) == 2
    assert "over the input limit of 100 pixels" in capsys.readouterr().err
    assert main(argv) == 0


# ------------------------------------------------------------------------ 4. no silent wrong reads
def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 1000, 30000], [40000, 65535, 12345]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    t = read_image(tmp_path / "g16.png")
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    expect = torch.from_numpy(values.astype(np.float32) / 65535.0)
    for c in range(3):
        torch.testing.assert_close(t[c], expect, rtol=0, atol=1e-7)


def test_other_image_modes_read_correctly(tmp_path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    grey = np.asarray(base.convert("L"))
    cases = {
        "la.png": (base.convert("LA"), np.repeat(grey[..., None], 3, 2) / 255.0),
        "p.png": (base.convert("P"), np.asarray(base.convert("P").convert("RGB")) / 255.0),
        "rgba.png": (base.convert("RGBA"), rgb / 255.0),
        "cmyk.tif": (base.convert("CMYK"), np.asarray(base.convert("CMYK").convert("RGB")) / 255.0),
        "i.tif": (Image.fromarray(grey.astype(np.int32) * 257), np.repeat(grey[..., None], 3, 2) / 255.0),
        "f.tif": (Image.fromarray(grey.astype(np.float32) / 255.0), np.repeat(grey[..., None], 3, 2) / 255.0),
    }
    for name, (im, expect) in cases.items():
        im.save(tmp_path / name)
        t = read_image(tmp_path / name, dtype=torch.float64)
        np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), expect, atol=1e-6, err_msg=name)
    Image.fromarray(np.full((3, 3), 7.5, np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # a float image outside [0, 1] is not guessed at
        read_image(tmp_path / "hdr.tif")


def test_exif_orientation_is_applied(tmp_path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (4, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.fromarray(arr).save(tmp_path / "side.png", exif=exif)
    t = read_image(tmp_path / "side.png")
    assert t.shape == (3, 7, 4)
    upright = np.rot90(arr, k=-1)  # clockwise
    np.testing.assert_array_equal((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), upright)


def test_derain_reader_is_the_shared_reader() -> None:
    from decodelab.derain.infer import load_image

    assert load_image is read_image


def test_eval_psnr_reads_16_bit_images(tmp_path) -> None:
    values = np.random.default_rng(0).integers(0, 65536, (16, 16), dtype=np.uint16)
    (tmp_path / "pred").mkdir()
    (tmp_path / "target").mkdir()
    Image.fromarray(values).save(tmp_path / "pred" / "a.png")
    Image.fromarray(values // 2).save(tmp_path / "target" / "a.png")
    js = tmp_path / "q.json"
    assert main(["eval", "psnr", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target"),
                 "--json", str(js)]) == 0  # fmt: skip
    a, b = read_image(tmp_path / "pred" / "a.png", dtype=torch.float64), (values // 2) / 65535.0
    mse = float(((a[0].numpy() - b) ** 2).mean())
    assert abs(json.loads(js.read_text())["metrics"]["psnr_mean"] - 10 * math.log10(1 / mse)) < 0.01


def _gpt_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return decodelab.create_model("test_gpt").save_pretrained(tmp_path / "gpt")


def test_fp16_safetensors_are_refused_unless_declared(tmp_path) -> None:
    d = _gpt_dir(tmp_path)
    state = load_file(str(d / WEIGHTS_NAME))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(d / WEIGHTS_NAME))
    with pytest.raises(CheckpointMismatchError, match=r"stores float16 weights where GPT expects float32 \(") as e:
        load_pretrained(d)
    assert '"weights_dtype": "float16"' in str(e.value) and "cls_embedding.embedding_table.weight" in str(e.value)
    cfg = json.loads((d / CONFIG_NAME).read_text())
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "weights_dtype": "float16"}))
    with pytest.warns(UserWarning, match="casting .* from the declared float16 to the model's float32"):
        model = load_pretrained(d)
    assert model.tok_embeddings.weight.dtype == torch.float32
    torch.testing.assert_close(model.tok_embeddings.weight, state["tok_embeddings.weight"].half().float())


def test_save_pretrained_declares_the_stored_dtype(tmp_path) -> None:
    torch.manual_seed(0)
    model = decodelab.create_model("test_gpt").eval()
    d = model.save_pretrained(tmp_path / "bf16", weights_dtype="bfloat16")
    assert json.loads((d / CONFIG_NAME).read_text())["weights_dtype"] == "bfloat16"
    assert load_file(str(d / WEIGHTS_NAME))["tok_embeddings.weight"].dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="bfloat16"):
        back = load_pretrained(d)
    torch.testing.assert_close(back.tok_embeddings.weight, model.tok_embeddings.weight.bfloat16().float())
    plain = model.save_pretrained(tmp_path / "fp32")
    assert "weights_dtype" not in json.loads((plain / CONFIG_NAME).read_text())
    with pytest.raises(ValueError, match="floating dtype"):
        model.save_pretrained(tmp_path / "int", weights_dtype="int8")


def test_integer_tensors_for_float_parameters_are_refused(tmp_path) -> None:
    d = _gpt_dir(tmp_path)
    state = load_file(str(d / WEIGHTS_NAME))
    state["tok_embeddings.weight"] = state["tok_embeddings.weight"].round().to(torch.int64)
    save_file(state, str(d / WEIGHTS_NAME))
    with pytest.raises(CheckpointMismatchError, match=r"tok_embeddings.weight: checkpoint int64 vs model float32"):
        load_pretrained(d)
    model = decodelab.create_model("test_gpt")
    with pytest.raises(CheckpointMismatchError, match="integer/floating-point dtype mismatches"):
        load_state_dict_strict(model, state)


def test_results_json_never_holds_infinity(tmp_path) -> None:
    from decodelab.config import dumps_json, json_safe, write_json

    obj = {"psnr": float("inf"), "rows": [1.0, float("nan")], "nested": {"x": -math.inf, "ok": 2.5},
           "np": np.float32(np.inf), "t": torch.tensor(3.0)}  # fmt: skip
    safe = json_safe(obj)
    assert safe["psnr"] is None and safe["psnr_nonfinite"] == "inf"
    assert safe["rows"] == [1.0, None] and safe["nested"] == {"x": None, "x_nonfinite": "-inf", "ok": 2.5}
    assert safe["np"] is None and safe["np_nonfinite"] == "inf" and safe["t"] == 3.0
    _strict_json(dumps_json(obj))
    path = write_json(tmp_path / "sub" / "r.json", obj)
    assert _strict_json(path.read_text())["psnr_nonfinite"] == "inf"


def test_eval_derain_of_identical_images_writes_strict_json(tmp_path, derainer) -> None:
    folder = tmp_path / "clean_pairs"
    for i in range(2):
        arr = _rgb(folder / f"norain-{i}.png", 16, 16, seed=i)
        Image.fromarray(arr).save(folder / f"rain-{i}.png")  # "rainy" == clean: infinite PSNR of the input
    js = tmp_path / "e.json"
    assert main(["eval", "derain", "--model", str(derainer), "--data", str(folder), "--protocol", "rgb",
                 "--json", str(js)]) == 0  # fmt: skip
    res = _strict_json(js.read_text())
    assert res["metrics"]["psnr_rgb_rainy"] is None and res["metrics"]["psnr_rgb_rainy_nonfinite"] == "inf"


def test_eval_psnr_of_identical_images_writes_strict_json(tmp_path) -> None:
    for d in ("pred", "target"):
        _rgb(tmp_path / d / "a.png")
    js = tmp_path / "q.json"
    assert main(["eval", "psnr", "--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target"),
                 "--json", str(js)]) == 0  # fmt: skip
    res = _strict_json(js.read_text())
    assert res["metrics"]["psnr_mean"] is None and res["metrics"]["psnr_mean_nonfinite"] == "inf"
