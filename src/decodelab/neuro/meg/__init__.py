"""MEG-to-image decoding (Benchetrit, Banville & King, ICLR 2024): the brain module, its blocks and loss.

:mod:`~decodelab.neuro.meg.layers` holds the blocks (spatial attention over sensor positions,
subject layer, dilated residual conv stack, temporal aggregation, projection heads);
:mod:`~decodelab.neuro.meg.brain_module` composes them (:class:`BrainModule`) and defines the
``lambda * CLIP + (1 - lambda) * MSE`` objective (:class:`BrainModuleLoss`);
:mod:`~decodelab.neuro.meg.simulate` writes simulated THINGS-MEG epochs from image features through a
known time-resolved forward model (:func:`~decodelab.neuro.meg.simulate.simulate_things_meg`). The THINGS-MEG loader is
:mod:`decodelab.datasets.things_meg`; retrieval metrics are in :mod:`decodelab.eval.meg`.
"""

from decodelab.neuro.meg.brain_module import (
    BRAIN_MODULE_PRESETS,
    BrainModule,
    BrainModuleLoss,
    BrainModuleOutput,
    brain_module_parameter_count,
    clip_loss,
    create_brain_module,
)
from decodelab.neuro.meg.layers import (
    ConvStack,
    FourierEmbedding,
    ProjectionHead,
    SpatialAttention,
    SubjectLayer,
    TemporalAggregation,
    sensor_dropout_mask,
)

__all__ = [
    "BRAIN_MODULE_PRESETS",
    "BrainModule",
    "BrainModuleLoss",
    "BrainModuleOutput",
    "ConvStack",
    "FourierEmbedding",
    "ProjectionHead",
    "SpatialAttention",
    "SubjectLayer",
    "TemporalAggregation",
    "brain_module_parameter_count",
    "clip_loss",
    "create_brain_module",
    "sensor_dropout_mask",
]
