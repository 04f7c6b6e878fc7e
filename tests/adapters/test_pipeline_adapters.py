"""Adapter pipelines: offline loading from a checkpoint directory, prompts, the CLI, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import decodelab
from decodelab.cli import main
from decodelab.vision.adapters import ADAPTERS, load_adapter
from decodelab.vision.pipeline import load_pipeline


def test_adapter_pipelines_are_registered() -> None:
    names = decodelab.list_pipelines()
    for name, spec in ADAPTERS.items():
        assert (name in names) == spec.pipeline  # token-only adapters (no VQ decoder) have no pipeline
    assert {"janus_pro_1b", "emu3_gen", "llamagen_t2i_xl_512", "lumina_mgpt_7b_768", "anole_7b"} <= set(names)


def test_missing_weights_name_the_hub_id_and_files(tmp_path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"deepseek-community/Janus-Pro-1B.*not in the local Hugging Face cache"
    ):
        load_pipeline("janus-pro-1b")  # the test HOME has an empty hub cache; nothing is downloaded
    with pytest.raises(FileNotFoundError, match=r"does not exist.*config\.json"):
        load_pipeline("janus-pro-1b", weights=tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"lacks tokenizer_config\.json, model\.safetensors for deepseek"):
        load_pipeline("janus-pro-1b", weights=tmp_path)
    from decodelab.vision.adapters import load_chameleon, load_emu3

    with pytest.raises(FileNotFoundError, match="BAAI/Emu3-Gen-hf"):
        load_emu3()
    with pytest.raises(FileNotFoundError, match="leloy/Anole-7b-v0.1-hf"):
        load_chameleon("anole_7b")
    with pytest.raises(ValueError, match="unknown adapter"):
        load_adapter("janus-pro-3b")


def test_pipeline_prompts_match_the_processor_and_greedy_matches_generate(janus_dir) -> None:
    from transformers import JanusProcessor

    adapter, vq, encoder, spec = load_adapter("janus-pro-1b", janus_dir, prompt_length=7)
    proc = JanusProcessor.from_pretrained(str(janus_dir), local_files_only=True)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "a red dog"}]}],
                                    add_generation_prompt=True)  # fmt: skip
    ref_ids = proc(text=text, generation_mode="image", return_tensors="pt")["input_ids"]
    ids, mask = encoder(["a red dog"])
    assert ids.tolist() == ref_ids.tolist() == [[1, 6, 8, 9, 10, 7, 4]]  # BOS, chat template, <begin_of_image>
    assert bool(mask.all()) and int(ids[0, -1]) == 4  # ends in <begin_of_image>
    with pytest.raises(ValueError, match="prompt_length"):
        encoder(["a red dog and the blue cat"])
    pipe = load_pipeline("janus-pro-1b", weights=janus_dir, prompt_length=ids.shape[1])
    out = pipe(prompts="a red dog", decoder="ar", temperature=0.0, cfg_scale=2.0)
    ref = adapter.hf.generate(ref_ids, attention_mask=torch.ones_like(ref_ids), generation_mode="image",
                              do_sample=False, guidance_scale=2.0)  # fmt: skip
    assert torch.equal(out.tokens.reshape(1, -1), ref)
    assert out.images[0].size == (64, 64)
    assert spec.defaults["cfg_scale"] == 5.0


def test_cli_generate_with_weights(janus_dir, tmp_path, capsys) -> None:
    out_dir = tmp_path / "out"
    rc = main(["generate", "--model", "janus-pro-1b", "--weights", str(janus_dir), "--prompt", "a red dog",
               "a blue cat",
               "--decoder", "sjd", "--decoder-arg", "window=4", "--seed", "3", "--out", str(out_dir)])  # fmt: skip
    assert rc == 0
    record = json.loads((out_dir / "record.json").read_text())
    assert record["decoder"] == "sjd" and record["sampling"]["cfg_scale"] == 5.0
    assert len(record["images"]) == 2
    assert Image.open(out_dir / record["images"][0]["file"]).size == (64, 64)
    assert main(["generate", "--model", "test-c2i", "--weights", str(janus_dir), "--class-id", "1"]) != 0
    assert "--weights is for adapter pipelines" in capsys.readouterr().err
