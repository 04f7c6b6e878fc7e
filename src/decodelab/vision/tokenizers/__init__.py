"""VQ image tokenizers (LlamaGen VQ-16 / VQ-8 architecture and a tiny ``test_vq`` variant).

Importing this package registers the tokenizer presets (``kind="tokenizer"``) in the model registry.
"""

from decodelab.vision.tokenizers.vq import VQModel, import_llamagen_vq, llamagen_vq_8, llamagen_vq_16, test_vq

__all__ = ["VQModel", "import_llamagen_vq", "llamagen_vq_8", "llamagen_vq_16", "test_vq"]
