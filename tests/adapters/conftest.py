"""Tiny random transformers models for the adapter tests (built from the config classes, no files)."""

from __future__ import annotations

import pytest
import torch


def tiny_janus(seed: int = 0, num_embeddings: int = 12, image_size: int = 64, head_std: float = 1.0):
    """A 2-layer Janus with a ``(image_size/16)^2`` grid and ``num_embeddings`` codes, eval mode.

    The generation head is re-drawn with a large std so that logits are spread (the default init
    makes every code nearly equally likely, and greedy ties would test nothing).
    """
    from transformers import JanusConfig, JanusForConditionalGeneration, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

    text = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
    )  # fmt: skip
    vision = JanusVisionConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=16,
        projection_dim=32, num_image_tokens=(image_size // 16) ** 2, mlp_ratio=2.0,
    )  # fmt: skip
    vq = JanusVQVAEConfig(
        embed_dim=4, num_embeddings=num_embeddings, latent_channels=32, base_channels=32,
        channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=1, projection_dim=32, image_token_embed_dim=32,
        num_hidden_layers=2,
    )  # fmt: skip
    cfg = JanusConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), vq_config=vq.to_dict(), image_token_id=5
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.model.generation_head.parameters():
            p.normal_(0.0, head_std)
        model.model.generation_embeddings.weight.normal_(0.0, 1.0)
        for name, p in model.model.language_model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.3)
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    gc = model.generation_config
    gc.bos_token_id, gc.pad_token_id, gc.generation_kwargs = 1, 0, {"boi_token_id": 7}
    return model


def janus_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded prompts (BOS .. <begin_of_image>=7) of different lengths, T = 7."""
    ids = torch.tensor([[0, 0, 1, 10, 11, 12, 7], [1, 13, 14, 15, 16, 17, 7]])
    return ids, ids != 0


@pytest.fixture
def make_janus():
    """Factory fixture: ``make_janus(seed=..., num_embeddings=..., image_size=...)``."""
    return tiny_janus


@pytest.fixture
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded Janus prompts and their mask (see :func:`janus_prompts`)."""
    return janus_prompts()


def tiny_janus_processor():
    """A real ``JanusProcessor`` over a 15-word word-level tokenizer (BOS added, chat template, 64 px)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import JanusImageProcessor, JanusProcessor, PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|User|>:",
             "<|Assistant|>:", "a", "red", "dog", "cat", "blue", "the", "[UNK]"]  # fmt: skip
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="[UNK]",
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"},
    )  # fmt: skip
    template = (
        "{% for m in messages %}<|User|>: {% for c in m['content'] %}{{ c['text'] }}{% endfor %} {% endfor %}"
        "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
    )
    image_processor = JanusImageProcessor(size={"height": 64, "width": 64})
    return JanusProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template, num_image_tokens=16)


@pytest.fixture
def janus_dir(tmp_path):
    """A tiny Janus checkpoint directory in the transformers layout (model + processor)."""
    model = tiny_janus()
    model.config.image_token_id = 3
    model.generation_config.generation_kwargs = {"boi_token_id": 4}
    model.generation_config._from_model_config = False  # saved as a real checkpoint's generation config
    path = tmp_path / "janus-tiny"
    model.save_pretrained(path)
    tiny_janus_processor().save_pretrained(path)
    return path


# Tiny Emu3 vocabulary: specials, text words 9..39, visual tokens 40.. (code c -> id 40 + c).
EMU3_SPECIAL = {"<|endoftext|>": 0, "<|extra_203|>": 1, "<|extra_204|>": 2, "<image>": 3, "<|image start|>": 4,
                "<|image token|>": 5, "<|extra_200|>": 6, "<|extra_201|>": 7, "<|image end|>": 8}  # fmt: skip
EMU3_VISUAL = 40


def tiny_emu3(seed: int = 0, codes: int = 12, lm_std: float = 0.3, head_std: float = 1.0):
    """A 2-layer Emu3 with ``codes`` visual tokens and a 2x spatial VQ decoder, eval mode."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    vocab_map = dict(EMU3_SPECIAL)
    vocab_map.update({f"<|visual token {c:06d}|>": EMU3_VISUAL + c for c in range(codes)})
    text = dict(
        vocab_size=EMU3_VISUAL + codes + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, attention_dropout=0.0,
    )  # fmt: skip
    vq = dict(
        codebook_size=codes, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2],
        num_res_blocks=1, attn_resolutions=[], temporal_downsample_factor=2, hidden_size=64,
    )  # fmt: skip
    cfg = Emu3Config(text_config=text, vq_config=vq, vocabulary_map=vocab_map)
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.model.text_model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if "embed" in name else lm_std)
        model.lm_head.weight.normal_(0.0, head_std)
    return model


@pytest.fixture
def make_emu3():
    """Factory fixture: ``make_emu3(seed=..., codes=...)``."""
    return tiny_emu3


CHAMELEON_VISUAL = 20  # tiny Chameleon: code c is id 20 + c (named IMGIMG<digits as letters>Z)


def tiny_chameleon(seed: int = 0, codes: int = 12, lm_std: float = 0.3, head_std: float = 1.0):
    """A 2-layer Chameleon (qk-norm attention) with ``codes`` image tokens, eval mode, pad id 1."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    def name(c: int) -> str:
        return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(c)) + "Z"

    vocab_map = {"<s>": 0, "<pad>": 1, "</s>": 2, "<image>": 3}
    vocab_map.update({name(c): CHAMELEON_VISUAL + c for c in range(codes)})
    cfg = ChameleonConfig(
        vocab_size=CHAMELEON_VISUAL + codes + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, vocabulary_map=vocab_map,
        vq_config=dict(embed_dim=4, num_embeddings=codes, latent_channels=32, resolution=16, base_channels=32,
                       channel_multiplier=[1, 2], num_res_blocks=1),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for n, p in model.model.named_parameters():
            if p.dim() == 2 and not n.startswith("vqmodel"):
                p.normal_(0.0, 1.0 if "embed" in n else lm_std)
        model.lm_head.weight.normal_(0.0, head_std)
    return model


@pytest.fixture
def make_chameleon():
    """Factory fixture: ``make_chameleon(seed=..., codes=...)``."""
    return tiny_chameleon


def word_tokenizer(words: list[str], **special):
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary (whitespace split)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", **special)


@pytest.fixture
def make_word_tokenizer():
    """Factory fixture: ``make_word_tokenizer(words, **special_tokens)``."""
    return word_tokenizer


@pytest.fixture
def emu3_dir(tmp_path):
    """A tiny Emu3 checkpoint directory (model + a real Emu3Processor over a word-level tokenizer)."""
    from transformers import Emu3ImageProcessor, Emu3Processor

    words: list = [None] * 12
    for k, v in EMU3_SPECIAL.items():
        words[v] = k
    words[9:12] = ["a", "red", "dog"]
    words += ["3*3", "[UNK]", "blue", "cat"]
    tok = word_tokenizer(
        words, pad_token="<|endoftext|>", bos_token="<|extra_203|>", eos_token="<|extra_204|>",
        extra_special_tokens={"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
                              "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"},
    )  # fmt: skip
    path = tmp_path / "emu3-tiny"
    tiny_emu3().save_pretrained(path)
    Emu3Processor(image_processor=Emu3ImageProcessor(), tokenizer=tok).save_pretrained(path)
    return path
