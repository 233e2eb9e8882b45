"""``plugtrain predict RUN_DIR|MODEL.onnx IMAGE... [--checkpoint best|last|PATH] [--weights model|ema|swa]
[--top-k K] [--json]``.

What the run's task predicts (top-k classes with probabilities, predicted values, ...) for image files, from a finished
run's checkpoint or from a model ``plugtrain export`` wrote (ONNX or pt2, with its sidecar JSON). Images are
preprocessed exactly as the run's validation samples: the dataset's own reader, the validation pipeline, the
normalisation (:class:`plugtrain.inference.Predictor`, opened by :func:`plugtrain.inference.open_model`). Which
weights predict is said on stderr (text) or in each result (``--json``: ``weights``, ``checkpoint``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError
from plugtrain.inference import open_model


def run(run_dir: str, images: Sequence[str], *, checkpoint: str | None = None, weights: str | None = None,
        top_k: int = 5, as_json: bool = False, out: str | None = None) -> int:
    """Predict ``images``; print a line (or JSON) per image; exit code 0."""
    if top_k < 1:
        raise PlugtrainError(f"--top-k must be >= 1, got {top_k}")
    predictor = open_model(run_dir, checkpoint, weights)
    results = predictor.predict([str(p) for p in images], top_k=top_k, out_dir=out)
    if as_json:
        console.print_json([{**r, "weights": predictor.weights, "checkpoint": predictor.checkpoint}
                            for r in results])
        return 0
    print(f"plugtrain: predict with {predictor.describe()}", file=sys.stderr, flush=True)  # stdout: a line an image
    for r in results:
        console.echo(f"{r['image']}\t{predictor.task_object.predict_text(r)}")  # the run's task words it
    return 0
