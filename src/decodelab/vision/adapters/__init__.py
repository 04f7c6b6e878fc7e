"""TokenModel adapters for transformers' multimodal image generators (Janus-Pro, Emu3-Gen, Anole, Lumina-mGPT).

Each adapter wraps the transformers model and its VQ decoder (Chameleon's VQ-GAN decoder, which
transformers lacks, is :mod:`~decodelab.vision.adapters.chameleon_vq`) so that every registered decoder
(``ar``, ``jacobi``, ``sjd``, ``sjd_coupled``, ...) runs on it unchanged: a static KV cache written
by position, image-code-only logits, forced structural tokens inside the adapter, and the model's
classifier-free-guidance convention as a null condition. See ``docs/adapters.md``.
"""

from decodelab.vision.adapters.base import ImageSequenceAdapter, PositionKVCache, VocabularyImageAdapter
from decodelab.vision.adapters.chameleon import CHAMELEON_HUB_IDS, ChameleonAdapter, load_chameleon
from decodelab.vision.adapters.chameleon_vq import ChameleonVQDecoder, import_chameleon_vq
from decodelab.vision.adapters.emu3 import EMU3_HUB_ID, Emu3Adapter, load_emu3
from decodelab.vision.adapters.janus import JANUS_HUB_IDS, JanusAdapter, load_janus
from decodelab.vision.adapters.loading import resolve_weights
from decodelab.vision.adapters.prompts import AdapterImageDecoder, PromptEncoder, left_pad
from decodelab.vision.adapters.table import ADAPTERS, AdapterSpec, load_adapter

__all__ = [
    "CHAMELEON_HUB_IDS",
    "ChameleonAdapter",
    "load_chameleon",
    "ChameleonVQDecoder",
    "import_chameleon_vq",
    "EMU3_HUB_ID",
    "Emu3Adapter",
    "load_emu3",
    "ADAPTERS",
    "AdapterSpec",
    "load_adapter",
    "JANUS_HUB_IDS",
    "AdapterImageDecoder",
    "ImageSequenceAdapter",
    "JanusAdapter",
    "PositionKVCache",
    "PromptEncoder",
    "VocabularyImageAdapter",
    "left_pad",
    "load_janus",
    "resolve_weights",
]
