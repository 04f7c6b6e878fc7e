"""Single-image deraining: MCW-Net (small / large), the authors' checkpoint importer, tiled inference,
offline rain synthesis and the training recipe.

Example:
    >>> import torch
    >>> from decodelab.derain import derain, test_mcwnet
    >>> model = test_mcwnet()
    >>> out = derain(model, torch.rand(3, 40, 52), tile=32, overlap=8)  # [3, 40, 52] in [0, 1]
"""

from decodelab.derain.importer import import_mcwnet, read_mcwnet_state_dict, to_upstream_state_dict
from decodelab.derain.infer import DEFAULT_MODEL, derain, load_derainer, load_image, save_image
from decodelab.derain.model import MCWNet, mcwnet_large, mcwnet_small, test_mcwnet

__all__ = [
    "DEFAULT_MODEL",
    "MCWNet",
    "derain",
    "import_mcwnet",
    "load_derainer",
    "load_image",
    "mcwnet_large",
    "mcwnet_small",
    "read_mcwnet_state_dict",
    "save_image",
    "test_mcwnet",
    "to_upstream_state_dict",
]
