"""fMRI and MEG decoding: linear brain-to-latent mappings and brain encoders.

:mod:`~decodelab.neuro.ridge` holds the multi-target ridge regression used to map voxels to image
latents at NSD scale (:class:`MultiTargetRidge`, :class:`MultiTargetRidgeCV`).
"""

from decodelab.neuro.ridge import MultiTargetRidge, MultiTargetRidgeCV

__all__ = ["MultiTargetRidge", "MultiTargetRidgeCV"]
