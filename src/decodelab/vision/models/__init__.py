"""Autoregressive image-token transformers (registered on import)."""

from decodelab.vision.models.gpt import GPT, import_llamagen_gpt

__all__ = ["GPT", "import_llamagen_gpt"]
