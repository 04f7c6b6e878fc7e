"""LlamaGen t2i: the T5 caption wiring, the upstream-file loader and the registered pipeline (tiny sizes)."""

from __future__ import annotations

import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.vision.adapters.llamagen_t2i import T5CaptionEncoder, load_llamagen_t2i

WORDS = ["<pad>", "</s>", "[UNK]", "a", "red", "dog", "blue", "cat", "on", "the", "grass"]


@pytest.fixture
def t5_dir(tmp_path, make_word_tokenizer):
    """A tiny T5 (d_model 24 = test_gpt_t2i's caption_dim) with a word-level tokenizer."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(WORDS), d_model=24, d_kv=6, d_ff=32, num_layers=1, num_heads=4, pad_token_id=0,
                   eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path / "flan-t5-xl"
    T5EncoderModel(cfg).save_pretrained(path)
    make_word_tokenizer(WORDS, pad_token="<pad>", eos_token="</s>").save_pretrained(path)
    return path


def test_t5_captions_are_left_aligned_encoder_states(t5_dir) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    enc = T5CaptionEncoder(t5_dir, max_length=6)
    emb, mask = enc(["a red dog", "a blue cat on the"])
    assert emb.shape == (2, 6, 24) and mask.tolist() == [[False] * 3 + [True] * 3, [False] + [True] * 5]
    ref_model = T5EncoderModel.from_pretrained(str(t5_dir), local_files_only=True).eval()
    ids = AutoTokenizer.from_pretrained(str(t5_dir), local_files_only=True)(["a red dog"], return_tensors="pt")
    with torch.no_grad():
        ref = ref_model(**ids).last_hidden_state[0]  # [3, 24], unpadded
    torch.testing.assert_close(emb[0, 3:], ref, atol=1e-5, rtol=1e-5)
    assert bool((emb[0, :3] == 0).all())
    with pytest.raises(ValueError, match="list of strings"):
        enc("a red dog")


@pytest.fixture
def llamagen_dir(tmp_path, t5_dir):
    """Tiny GPT t2i and VQ saved as upstream ``.pt`` files (``{"model": state_dict}``) beside the T5 directory."""
    torch.manual_seed(1)
    gpt = decodelab.create_model("test_gpt_t2i")
    torch.nn.init.normal_(gpt.output.weight, 0.0, 0.3)
    vq = decodelab.create_model("test_vq", codebook_size=64)
    torch.save({"model": gpt.state_dict()}, tmp_path / "t2i_XL_stage1_256.pt")
    torch.save({"model": vq.state_dict()}, tmp_path / "vq_ds16_t2i.pt")
    return tmp_path


def test_loader_builds_gpt_vq_and_t5_from_upstream_files(llamagen_dir) -> None:
    gpt, vq, enc = load_llamagen_t2i(llamagen_dir, image_size=256, gpt_preset="test_gpt_t2i", vq_preset="test_vq",
                                     cls_token_num=6, caption_dim=24, block_size=16)  # fmt: skip
    assert gpt.condition_kind == "text" and gpt.num_cond_tokens == 6 and vq.codebook_size == gpt.vocab_size
    cond, mask = enc(["a red dog", "the blue cat"])
    s = SamplingConfig(temperature=0.0, cfg_scale=3.0)
    ar = create_decoder("ar")(gpt, cond, cond_mask=mask, sampling=s)
    assert torch.equal(create_decoder("jacobi", window=4)(gpt, cond, cond_mask=mask, sampling=s).tokens, ar.tokens)
    assert vq.decode(ar.tokens).shape[0] == 2


def test_missing_llamagen_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"t2i_XL_stage2_512\.pt, vq_ds16_t2i\.pt, flan-t5-xl/"):
        load_llamagen_t2i(tmp_path, image_size=512)
    with pytest.raises(FileNotFoundError, match="needs weights=DIR"):
        decodelab.load_pipeline("llamagen-t2i-xl-512")
    with pytest.raises(ValueError, match="image_size"):
        load_llamagen_t2i(tmp_path, image_size=384)
