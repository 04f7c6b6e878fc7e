"""Image-token transformers and domain networks (registered on import)."""

from decodelab.vision.models.fmnist_classifier import FMNISTClassifier, load_classifier
from decodelab.vision.models.gpt import GPT, import_llamagen_gpt

__all__ = ["GPT", "FMNISTClassifier", "import_llamagen_gpt", "load_classifier"]
