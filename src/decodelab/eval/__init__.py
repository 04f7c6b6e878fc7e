"""Evaluation metrics."""

from decodelab.eval.shapes_geneval import (
    Detection,
    ShapesGenEval,
    detect_objects,
    evaluate_detections,
    score_batch,
    score_image,
)

__all__ = ["Detection", "ShapesGenEval", "detect_objects", "evaluate_detections", "score_batch", "score_image"]
