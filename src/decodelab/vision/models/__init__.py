"""Image-token transformers and domain networks (registered on import)."""

from decodelab.vision.models.fmnist_classifier import FMNISTClassifier, load_classifier
from decodelab.vision.models.gpt import GPT, import_llamagen_gpt
from decodelab.vision.models.nar import NAR, import_nar

__all__ = ["GPT", "NAR", "FMNISTClassifier", "import_llamagen_gpt", "import_nar", "load_classifier"]
