"""fMRI and MEG decoding: linear brain-to-latent mappings and brain encoders.

:mod:`~decodelab.neuro.ridge` holds the multi-target ridge regression used to map voxels to image
latents at NSD scale (:class:`MultiTargetRidge`, :class:`MultiTargetRidgeCV`). The other models
are imported from their modules: :mod:`~decodelab.neuro.meg` (the MEG brain module),
:mod:`~decodelab.neuro.brain_diffuser` (Brain-Diffuser's real path),
:mod:`~decodelab.neuro.incontext` (in-context cross-subject decoding),
:mod:`~decodelab.neuro.captioning` (brain captioning with GIT), and the simulators
(:mod:`~decodelab.neuro.simulate_fmri`, :mod:`~decodelab.neuro.meg.simulate`). Runs that combine
them with data, metrics and the shipped generators are in :mod:`decodelab.neuro.runs`.
"""

from decodelab.neuro.ridge import MultiTargetRidge, MultiTargetRidgeCV

__all__ = ["MultiTargetRidge", "MultiTargetRidgeCV"]
