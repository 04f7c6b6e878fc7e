"""The libraries of the field import and run here: a tiny random-init forward through each (no weights, no network).

torch 2.14.1 with torchvision 0.29.1 is the pair that loads together (see the Makefile); with an
unloadable torchvision, ``torchvision.ops`` and transformers' model imports fail, so these tests
are the first to say so.
"""

from __future__ import annotations

import pytest
import torch


def test_torchvision_models_and_compiled_ops():
    import torchvision
    from torchvision.ops import nms

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)  # a compiled torchvision op
    assert keep.tolist() == [0, 2]


def test_timm_creates_and_runs_a_model():
    import timm

    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=5).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_open_clip_encodes_images_and_text():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=8,
        vision_cfg={"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    ).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "a red cube"])  # bundled BPE vocabulary
    assert tokens.shape == (2, 77) and tokens[0, 0] == 49406
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 3, 16, 16)).shape == (2, 8)
        assert model.encode_text(tokens).shape == (2, 8)


def test_diffusers_unet_and_scheduler_step():
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=10)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        eps = unet(x, 5).sample
    assert eps.shape == x.shape
    assert scheduler.step(eps, 5, x).prev_sample.shape == x.shape


def test_transformers_clip_model():
    transformers = pytest.importorskip("transformers", reason="needs transformers (the text extra)")
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=3,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8,
    )  # fmt: skip
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[0, 5, 7, 3]]), pixel_values=torch.rand(2, 3, 16, 16))
    assert out.logits_per_image.shape == (2, 1) and transformers.__version__
