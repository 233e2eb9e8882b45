"""``plugtrain predict RUN_DIR|MODEL.onnx PATH... [--checkpoint best|last|PATH] [--weights model|ema|swa]
[--top-k K] [--json] [--out DIR|FILE.csv|FILE.jsonl [--overwrite]] [--batch-size N] [--num-workers N]
[--on-error raise|skip] [--tta | --tta-views flip|flips4]``.

What the run's task predicts (top-k classes with probabilities, predicted values, ...) for image files, from a finished
run's checkpoint or from a model ``plugtrain export`` wrote (ONNX or pt2, with its sidecar JSON). Images are
preprocessed exactly as the run's validation samples: the dataset's own reader, the validation pipeline, the
normalisation (:class:`plugtrain.inference.Predictor`, opened by :func:`plugtrain.inference.open_model`). Which
weights predict is said on stderr (text) or in each result (``--json``: ``weights``, ``checkpoint``). With ``--out``,
a task that writes files of its predictions (``Task.save_prediction``: segmentation's mask PNG) writes them into DIR,
which must be new or empty unless ``--overwrite`` (then same-named files in it are replaced, no other is touched).

Batch form: folders (recursive) and globs (``'imgs/**/*.png'``) of the image files the run's dataset reads, or any
paths with ``--out FILE.csv|FILE.jsonl``, stream through a DataLoader (the run's ``data.num_workers`` and batch size
unless ``--num-workers`` / ``--batch-size``) with a progress bar on stderr, into FILE (``path`` and what the task
predicts: ``top1_class``, ``top1_probability``, ... in CSV; the task's result in JSON lines), written whole or not at
all; a metric-learning run's embeddings go to ``FILE.npy`` beside it, row ``row`` of each line. An unreadable file is
listed on stderr and skipped (exit 0, with a warning count), or with ``--on-error raise`` is bad input (exit 2).

``--tta`` predicts from each image's views (the identity and its horizontal flip; ``flips4`` adds the vertical and
double flips), their outputs merged by the run's task (``Task.tta_merge``; a task without it refuses ``--tta``).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.atomic import write_atomic
from plugtrain.core.errors import PlugtrainError
from plugtrain.inference import expand_images, is_batch_path, open_model

#: ``--out`` suffixes that make it a results file (the batch form) rather than a folder of the task's files.
RESULT_SUFFIXES = (".csv", ".jsonl")


def run(run_dir: str, images: Sequence[str], *, checkpoint: str | None = None, weights: str | None = None,
        top_k: int = 5, as_json: bool = False, out: str | None = None, overwrite: bool = False,
        batch_size: int | None = None, num_workers: int | None = None, on_error: str = "skip",
        tta: str | None = None) -> int:
    """Predict ``images`` (with ``tta``, from their test-time augmented views); print a line (or JSON) per image, or
    write ``--out FILE.csv|.jsonl``; exit code 0."""
    if top_k < 1:
        raise PlugtrainError(f"--top-k must be >= 1, got {top_k}")
    results_file = out is not None and Path(out).suffix.lower() in RESULT_SUFFIXES
    if results_file or any(is_batch_path(p) for p in images):
        return run_batch(run_dir, images, checkpoint=checkpoint, weights=weights, top_k=top_k, as_json=as_json,
                         out=out if results_file else None, overwrite=overwrite, batch_size=batch_size,
                         num_workers=num_workers, on_error=on_error, mask_dir=None if results_file else out, tta=tta)
    if out is not None:
        _check_out(Path(out), images, overwrite)
    predictor = open_model(run_dir, checkpoint, weights)
    predictor.use_tta(tta)
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


def run_batch(run_dir: str, paths: Sequence[str], *, checkpoint: str | None, weights: str | None, top_k: int,
              as_json: bool, out: str | None, overwrite: bool, batch_size: int | None, num_workers: int | None,
              on_error: str, mask_dir: str | None, tta: str | None = None) -> int:
    """The batch form: folders and globs expanded, streamed through a DataLoader, into ``out`` (CSV / JSON lines,
    embeddings in ``.npy`` beside it) or onto stdout; unreadable files listed and skipped, or bad input."""
    if mask_dir is not None:
        raise PlugtrainError(f"predict: --out '{mask_dir}': folders and globs write a results file, --out FILE.csv "
                             "or FILE.jsonl (a folder of the task's files takes the image files one by one)")
    targets = [] if out is None else _check_results_out(Path(out), overwrite)
    predictor = open_model(run_dir, checkpoint, weights)
    predictor.use_tta(tta)
    embeddings = getattr(predictor.task_object, "outputs", None) == "embeddings"
    if embeddings and out is None:
        raise PlugtrainError(f"predict: task '{predictor.task}' gives embeddings, not classes: give --out FILE.csv "
                             "or FILE.jsonl (the embeddings go to FILE.npy beside it)")
    if embeddings and targets[1].exists() and not overwrite:
        raise PlugtrainError(f"predict: --out '{out}': its embeddings file {targets[1]} exists; give another file, "
                             "or --overwrite to replace both")
    files = expand_images(paths, predictor.extensions())
    print(f"plugtrain: predict {len(files)} image(s) with {predictor.describe()}", file=sys.stderr, flush=True)
    rows: list[dict[str, Any]] = []
    vectors: list[Any] = []
    unreadable: list[tuple[str, str]] = []
    bar = _Progress(len(files))
    try:
        for good, outputs, bad in predictor.stream(files, batch_size=batch_size, num_workers=num_workers,
                                                   on_error=on_error):
            for path, reason in bad:
                bar.message(f"plugtrain: predict: {path}: unreadable, skipped: {reason}")
            unreadable.extend(bad)
            for path, output in zip(good, outputs, strict=True):
                if embeddings:
                    rows.append({"path": path, "row": len(vectors)})
                    vectors.append(output.numpy())
                    continue
                row = {"path": path, **predictor.task_object.predict(output, predictor.class_names, top_k)}
                rows.append(row)
                if out is None and not as_json:
                    bar.message(f"{path}\t{predictor.task_object.predict_text(row)}", stdout=True)
            bar.advance(len(good) + len(bad))
    finally:
        bar.close()
    if out is not None:
        _write_results(Path(out), targets, rows, vectors if embeddings else None)
        print(f"plugtrain: predict: {len(rows)} prediction(s) written to {out}"
              + (f" (embeddings: {targets[1]})" if embeddings else ""), file=sys.stderr, flush=True)
    elif as_json:
        console.print_json([{"image": r.pop("path"), **r, "weights": predictor.weights,
                             "checkpoint": predictor.checkpoint} for r in rows])
    if unreadable:
        print(f"plugtrain: predict: warning: {len(unreadable)} unreadable file(s) skipped (listed above)",
              file=sys.stderr, flush=True)
    return 0


def _check_results_out(out: Path, overwrite: bool) -> list[Path]:
    """The files ``--out FILE`` writes (FILE, and FILE.npy for embeddings); an existing one is refused unless
    ``--overwrite``, a missing folder or a folder given as FILE is bad input."""
    targets = [out, out.with_suffix(".npy")]
    if out.is_dir():
        raise PlugtrainError(f"predict: --out '{out}' is a folder, not a results file")
    if not out.parent.is_dir():
        raise PlugtrainError(f"predict: --out '{out}': no such folder {out.parent}")
    if out.exists() and not overwrite:
        raise PlugtrainError(f"predict: --out '{out}' exists; give another file, or --overwrite to replace it")
    return targets


def _write_results(out: Path, targets: list[Path], rows: list[dict[str, Any]], vectors: list[Any] | None) -> None:
    """Write FILE (and FILE.npy) whole: both are built in memory first, then each is written atomically, so a
    failure while formatting leaves no file and a crash leaves the old file or the new one, never a torn one."""
    import io

    import numpy as np

    text = io.StringIO(newline="")
    if out.suffix.lower() == ".jsonl":
        for row in rows:
            text.write(json.dumps(row) + "\n")
    else:
        flat = [_flat(row) for row in rows]
        columns = list(dict.fromkeys(k for row in flat for k in row))
        writer = csv.DictWriter(text, fieldnames=columns or ["path"])
        writer.writeheader()
        writer.writerows(flat)
    matrix = None
    if vectors is not None:
        matrix = io.BytesIO()
        np.save(matrix, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))
    write_atomic(out, text.getvalue())
    if matrix is not None:
        write_atomic(targets[1], matrix.getvalue())


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A result as CSV columns: ``top_k`` as ``top1_class``, ``top1_probability``, ... (its ``index`` too);
    other lists and objects as JSON."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key == "top_k" and isinstance(value, list):
            for n, entry in enumerate(value, 1):
                flat.update({f"top{n}_{k}": v for k, v in entry.items()})
        elif isinstance(value, (list, dict)):
            flat[key] = json.dumps(value)
        else:
            flat[key] = value
    return flat


class _Progress:
    """Images done of ``total`` on stderr: a rich bar in a terminal, a plain line every few seconds otherwise."""

    def __init__(self, total: int, interval: float = 5.0) -> None:
        self.total, self.done, self.interval = total, 0, interval
        self._last = time.monotonic()
        self._bar: Any = None
        if console.is_tty() and console.rank() == 0:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task("predict", total=total)
            self._bar.start()

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif time.monotonic() - self._last >= self.interval or self.done == self.total:
            self._last = time.monotonic()
            print(f"plugtrain: predict: {self.done}/{self.total} images", file=sys.stderr, flush=True)

    def message(self, text: str, stdout: bool = False) -> None:
        """A line above the bar (stdout: a prediction line; stderr otherwise)."""
        if stdout:
            console.echo(text)
        elif self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
