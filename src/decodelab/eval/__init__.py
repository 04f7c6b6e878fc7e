"""Evaluation metrics and protocols: FID family (FID/KID/IS/precision-recall), GenEval, CLIP score, image quality.

Pure maths: :mod:`~decodelab.eval.fid` (Fréchet distance, KID), :mod:`~decodelab.eval.scores`
(Inception Score, precision/recall). Networks: :mod:`~decodelab.eval.features` (registered feature
extractors), :mod:`~decodelab.eval.assets` (local, hash-checked weights). Protocols:
:mod:`~decodelab.eval.metrics` (:func:`compute_metrics`), :mod:`~decodelab.eval.refstats` (cached
reference statistics), :mod:`~decodelab.eval.geneval`, :mod:`~decodelab.eval.clip_score`.

Generating the images to evaluate is a pipeline-level job: :mod:`decodelab.vision.sampler` (the one
resumable sampler) and :mod:`decodelab.vision.bench` (decode speed).
"""

from decodelab.eval.features import EXTRACTORS, FeatureSet, create_extractor
from decodelab.eval.fid import feature_statistics, fid_from_features, frechet_distance, kid
from decodelab.eval.geneval import evaluate_detections, read_metadata, score_folder, summarize
from decodelab.eval.metrics import compute_metrics, metrics_from_features
from decodelab.eval.scores import inception_score, precision_recall
from decodelab.eval.shapes_geneval import (
    Detection,
    ShapesDetector,
    ShapesGenEval,
    detect_objects,
    score_batch,
    score_image,
)

__all__ = [
    "EXTRACTORS",
    "Detection",
    "FeatureSet",
    "ShapesDetector",
    "ShapesGenEval",
    "compute_metrics",
    "create_extractor",
    "detect_objects",
    "evaluate_detections",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "kid",
    "metrics_from_features",
    "precision_recall",
    "read_metadata",
    "score_batch",
    "score_folder",
    "score_image",
    "summarize",
]
