"""``plugtrain predict RUN_DIR|MODEL.onnx IMAGE... [--checkpoint best|last|PATH] [--weights model|ema|swa]
[--top-k K] [--json] [--out DIR [--overwrite]]``.

What the run's task predicts (top-k classes with probabilities, predicted values, ...) for image files, from a finished
run's checkpoint or from a model ``plugtrain export`` wrote (ONNX or pt2, with its sidecar JSON). Images are
preprocessed exactly as the run's validation samples: the dataset's own reader, the validation pipeline, the
normalisation (:class:`plugtrain.inference.Predictor`, opened by :func:`plugtrain.inference.open_model`). Which
weights predict is said on stderr (text) or in each result (``--json``: ``weights``, ``checkpoint``). With ``--out``,
a task that writes files of its predictions (``Task.save_prediction``: segmentation's mask PNG) writes them into DIR,
which must be new or empty unless ``--overwrite`` (then same-named files in it are replaced, no other is touched).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError
from plugtrain.inference import open_model


def run(run_dir: str, images: Sequence[str], *, checkpoint: str | None = None, weights: str | None = None,
        top_k: int = 5, as_json: bool = False, out: str | None = None, overwrite: bool = False) -> int:
    """Predict ``images``; print a line (or JSON) per image; exit code 0."""
    if top_k < 1:
        raise PlugtrainError(f"--top-k must be >= 1, got {top_k}")
    if out is not None:
        _check_out(Path(out), images, overwrite)
    predictor = open_model(run_dir, checkpoint, weights)
    if out is not None and not callable(getattr(predictor.task_object, "save_prediction", None)):
        raise PlugtrainError(f"predict: --out: task '{predictor.task}' writes no files of its predictions; "
                             "leave --out out (--json prints every result)")
    results = predictor.predict([str(p) for p in images], top_k=top_k, out_dir=out)
    if as_json:
        console.print_json([{**r, "weights": predictor.weights, "checkpoint": predictor.checkpoint}
                            for r in results])
        return 0
    print(f"plugtrain: predict with {predictor.describe()}", file=sys.stderr, flush=True)  # stdout: a line an image
    for r in results:
        console.echo(f"{r['image']}\t{predictor.task_object.predict_text(r)}")  # the run's task words it
    return 0


def _check_out(out: Path, images: Sequence[str], overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, a non-empty folder without ``--overwrite``, or images whose files would
    take the same names in it (two ``x.png`` in different folders): nothing a user has is overwritten unasked."""
    if out.exists() and not out.is_dir():
        raise PlugtrainError(f"predict: --out '{out}' is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PlugtrainError(f"predict: --out '{out}' is not empty; give another folder, or --overwrite to replace "
                             "the files of the same names in it")
    seen: dict[str, str] = {}
    for image in map(str, images):
        first = seen.setdefault(Path(image).stem, image)
        if first != image:
            raise PlugtrainError(f"predict: '{first}' and '{image}' would write files of the same name in --out; "
                                 "predict them into separate folders")
