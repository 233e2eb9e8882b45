"""Metrics: torchmetrics, reduced across ranks by torchmetrics itself.

Classification metrics are updated with logits ``(N, C)`` and class indices, regression metrics with outputs
``(N,)`` or ``(N, 1)`` and targets. The metric-learning metrics (``precision_at_1``, ``recall_at_1``,
``map_at_r``) are updated with the validation embeddings ``(N, D)`` and their integer labels: they keep every
embedding (torchmetrics ``cat`` states, gathered from every rank before ``compute()``) and score leave-one-out
retrieval over the whole validation set with pytorch-metric-learning's ``AccuracyCalculator`` (cosine similarity,
each sample queried against all the others).

Visual metrics (``confusion_matrix``, ``parity_plot``, ``embeddings``) add no scalar: their ``compute()`` returns an
empty dict, so nothing of theirs reaches ``metrics.csv``. After ``compute()`` they offer what the runtime hands to the
loggers at each validation: ``image()`` an ``HxWx3`` uint8 array (``log_image(tag, image, step)``, tag
``val/<name>``), ``embeddings()`` ``(tensor (N, D), labels)`` (``log_embedding``: TensorBoard's projector). Images
are drawn with numpy and Pillow (no plotting library needed).

Multi-label metrics (``map``, ``f1_micro``, ``f1_macro`` and ``per_class_ap`` in a ``multilabel`` run) are
torchmetrics' multilabel family, updated with logits ``(N, C)`` (a sigmoid each) and multi-hot targets; F1 counts a
class as predicted when its probability reaches ``threshold``. ``map`` is the macro average precision over the
classes that have positives in the validation set; ``per_class_ap`` adds one ``.../<class index>`` value per class.

Roles: each task's default metrics (``default:<task>``) are those of a spec without ``[[metrics]]``; ``accuracy`` is
added to every classification run (``always:classification``).
"""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import Interval

from plugtrain import Component, hookimpl

#: A probability threshold: a number in [0, 1].
Unit = Annotated[float, Interval(ge=0, le=1)]

#: The roles that make a metric one of its task's defaults (a spec without ``[[metrics]]``).
_CLS, _REG, _ML = "default:classification", "default:regression", "default:metric_learning"


def accuracy(num_classes: int, top_k: int = 1):
    """Multiclass accuracy (micro), top-k when ``top_k`` > 1."""
    import torchmetrics

    return torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average="micro")


def top5(num_classes: int):
    """Top-5 multiclass accuracy (top-min(5, classes))."""
    return accuracy(num_classes, top_k=min(5, num_classes))


def f1_macro(num_classes: int, task: str = "classification", threshold: Unit | None = None,
             task_params: dict[str, Any] | None = None):
    """Macro-averaged F1: multiclass, or per label in a multilabel run.

    Multilabel: a class is predicted when its probability reaches ``threshold`` (default: the task's)."""
    import torchmetrics

    if task == "multilabel":
        from plugtrain.plugins.metric_classes import MultilabelF1

        return MultilabelF1(num_classes, "macro", _threshold(threshold, task_params))
    return torchmetrics.classification.MulticlassF1Score(num_classes=num_classes, average="macro")


def f1_micro(num_classes: int, threshold: Unit | None = None, task_params: dict[str, Any] | None = None):
    """Micro-averaged multilabel F1: every (sample, class) decision pooled.

    A class is predicted when its probability reaches ``threshold`` (default: the task's)."""
    from plugtrain.plugins.metric_classes import MultilabelF1

    return MultilabelF1(num_classes, "micro", _threshold(threshold, task_params))


def map_macro(num_classes: int):
    """Multilabel mean average precision (mAP), threshold-free.

    The macro average of each class's AP (torchmetrics), over the classes with at least one positive in the
    validation set."""
    from plugtrain.plugins.metric_classes import MultilabelAP

    return MultilabelAP(num_classes, per_class=False)


def per_class_ap(num_classes: int):
    """The average precision of each class of a multilabel run.

    One value per class, ``<metric>/<class index>`` (NaN for a class without positives in the validation set);
    ``plugtrain evaluate`` also reports them by class name."""
    from plugtrain.plugins.metric_classes import MultilabelAP

    return MultilabelAP(num_classes, per_class=True)


def _threshold(threshold: float | None, task_params: dict[str, Any] | None) -> float:
    """The metric's own ``threshold``, else the task's (``[task] threshold``), else 0.5."""
    if threshold is not None:
        return float(threshold)
    return float((task_params or {}).get("threshold", 0.5))


def mae():
    """Mean absolute error."""
    import torchmetrics

    return torchmetrics.MeanAbsoluteError()


def rmse():
    """Root mean squared error."""
    import torchmetrics

    return torchmetrics.MeanSquaredError(squared=False)


def r2():
    """Coefficient of determination R²."""
    import torchmetrics

    return torchmetrics.R2Score()


def precision_at_1():
    """Precision@1 of leave-one-out retrieval on the validation embeddings (is the nearest neighbour's class right?)."""
    from plugtrain.plugins.metric_classes import RetrievalMetric

    return RetrievalMetric("precision_at_1")


def recall_at_1():
    """Recall@1 of leave-one-out retrieval on the validation embeddings: by definition the same number as
    ``precision_at_1`` (the share of queries whose nearest neighbour has their class); kept for specs that name it,
    not among the defaults."""
    from plugtrain.plugins.metric_classes import RetrievalMetric

    return RetrievalMetric("precision_at_1")


def map_at_r():
    """Mean average precision at R (MAP@R, Musgrave et al. 2020) of leave-one-out retrieval on the validation
    embeddings; R is the number of other samples of the query's class."""
    from plugtrain.plugins.metric_classes import RetrievalMetric

    return RetrievalMetric("mean_average_precision_at_r")


# -- visual metrics --------------------------------------------------------------------------------------------------
_WHITE = (255, 255, 255)
_DARK = (8, 48, 107)  # the darkest blue of the colour scale
_POINT = (31, 119, 180)
_LINE = (214, 39, 40)
_INK = (0, 0, 0)


def _font(size: int = 11) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _axis_labels(num_classes: int, class_names: Any = None) -> list[str]:
    """The axis label of each class: its name (cut to 24 characters) when the names fit, else its index."""
    names = list(class_names or ())
    if len(names) != num_classes:
        return [str(k) for k in range(num_classes)]
    return [str(n) if len(str(n)) <= 24 else str(n)[:23] + "~" for n in names]


def confusion_matrix_geometry(num_classes: int, class_names: Any = None) -> tuple[int, int, int]:
    """``(left, top, cell)``: where cell ``(true i, predicted j)`` of :func:`render_confusion_matrix` starts, as
    ``(left + j * cell, top + i * cell)``, and its size in pixels (480 pixels in all, at most 48 a cell). Class
    names widen the left margin (row labels) and deepen the top one (column labels, drawn upright when wider than a
    cell)."""
    cell = max(1, min(48, 480 // max(num_classes, 1)))
    labels = _axis_labels(num_classes, class_names)
    if all(label.isdigit() for label in labels):
        return 48, 44, cell
    from PIL import Image, ImageDraw

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font(11)
    widest = max((_text_size(draw, label, font)[0] for label in labels), default=0)
    top = 44 if widest < cell - 2 else 26 + widest
    return max(48, widest + 12), top, cell


def render_confusion_matrix(matrix: Any, class_names: Any = None) -> Any:
    """An ``HxWx3`` uint8 picture of a confusion matrix (rows: true class, columns: predicted class), the axes
    labelled with ``class_names`` (with the class indices when there are none).

    A cell's colour is its share of the row (white 0 to dark blue 1: the per-class recall on the diagonal); cells are
    outlined from 6 pixels and hold their counts from 20 pixels up (24 classes or fewer).
    """
    import numpy as np
    from PIL import Image, ImageDraw

    m = np.asarray(matrix, dtype=np.float64)
    c = int(m.shape[0])
    left, top, cell = confusion_matrix_geometry(c, class_names)
    labels = _axis_labels(c, class_names)
    size = c * cell
    canvas = np.full((top + size + 28, max(left + size + 16, 360), 3), 255, dtype=np.uint8)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    white, dark = np.asarray(_WHITE, dtype=np.float64), np.asarray(_DARK, dtype=np.float64)
    colours = np.rint(white + share[..., None] * (dark - white)).astype(np.uint8)  # (c, c, 3)
    cells = np.broadcast_to(colours[:, None, :, None, :], (c, cell, c, cell, 3)).copy()
    if cell >= 6:
        for edge in (0, -1):
            cells[:, edge] = 220
            cells[:, :, :, edge] = 220
    canvas[top:top + size, left:left + size] = cells.reshape(size, size, 3)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = _font(11)
    if cell >= 20:
        for i, j in zip(*np.nonzero(m), strict=True):
            text = str(int(m[i, j]))
            tw, th = _text_size(draw, text, font)
            if tw < cell - 2:
                x, y = left + j * cell, top + i * cell
                ink = _WHITE if share[i, j] > 0.5 else _INK
                draw.text((x + (cell - tw) / 2, y + (cell - th) / 2 - 2), text, fill=ink, font=font)
    step = max(1, int(np.ceil(16 / cell)), int(np.ceil(c / 30)))
    for k in range(0, c, step):
        text = labels[k]
        tw, th = _text_size(draw, text, font)
        if top == 44:  # every name fits above its column
            draw.text((left + k * cell + (cell - tw) / 2, top - th - 6), text, fill=_INK, font=font)
        else:  # some name is wider than its column: all upright, reading bottom to top
            label = Image.new("RGB", (tw + 2, th + 6), _WHITE)
            ImageDraw.Draw(label).text((0, 0), text, fill=_INK, font=font)
            label = label.rotate(90, expand=True)
            img.paste(label, (int(left + k * cell + (cell - label.width) / 2), top - label.height - 4))
        draw.text((left - tw - 6, top + k * cell + (cell - th) / 2 - 2), text, fill=_INK, font=font)
    total = m.sum()
    acc = float(np.trace(m) / total) if total else float("nan")
    draw.text((4, 4), f"confusion matrix (n = {int(total)}, accuracy {acc:.3f})", fill=_INK, font=font)
    draw.text((left, top + size + 8), "columns: predicted class, rows: true class", fill=_INK, font=font)
    return np.asarray(img, dtype=np.uint8).copy()


def parity_geometry(lo: float, hi: float) -> tuple[Any, int]:
    """``(to_pixel, size)`` of :func:`render_parity_plot` for axis limits ``lo..hi``: ``to_pixel(target,
    prediction)`` is the ``(x, y)`` pixel of a point; ``size`` the image's width and height."""
    size, margin = 420, 56
    span = (hi - lo) or 1.0
    inner = size - 2 * margin

    def to_pixel(t: float, p: float) -> tuple[int, int]:
        x = margin + (t - lo) / span * inner
        y = size - margin - (p - lo) / span * inner
        return int(round(x)), int(round(y))

    return to_pixel, size


def parity_limits(targets: Any, preds: Any) -> tuple[float, float]:
    """The common axis limits of a parity plot: the range of targets and predictions, 5 % wider on each side."""
    import numpy as np

    both = np.concatenate([np.asarray(targets, dtype=np.float64).ravel(), np.asarray(preds, dtype=np.float64).ravel()])
    both = both[np.isfinite(both)]
    if not both.size:
        return 0.0, 1.0
    lo, hi = float(both.min()), float(both.max())
    pad = (hi - lo) * 0.05 or 0.5
    return lo - pad, hi + pad


def render_parity_plot(targets: Any, preds: Any) -> Any:
    """An ``HxWx3`` uint8 parity plot: prediction against target for every validation sample, and the line
    ``prediction = target``; the title gives n, MAE and R2."""
    import numpy as np
    from PIL import Image, ImageDraw

    t = np.asarray(targets, dtype=np.float64).ravel()
    p = np.asarray(preds, dtype=np.float64).ravel()
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    lo, hi = parity_limits(t, p)
    to_pixel, size = parity_geometry(lo, hi)
    img = Image.new("RGB", (size, size), _WHITE)
    draw = ImageDraw.Draw(img)
    font = _font(11)
    (x0, y0), (x1, y1) = to_pixel(lo, lo), to_pixel(hi, hi)
    draw.rectangle([x0, y1, x1, y0], outline=_INK)
    draw.line([x0, y0, x1, y1], fill=_LINE, width=1)
    for value in (lo, (lo + hi) / 2, hi):
        label = f"{value:.3g}"
        tw, th = _text_size(draw, label, font)
        x, _ = to_pixel(value, lo)
        draw.line([x, y0, x, y0 + 4], fill=_INK)
        draw.text((x - tw / 2, y0 + 6), label, fill=_INK, font=font)
        _, y = to_pixel(lo, value)
        draw.line([x0 - 4, y, x0, y], fill=_INK)
        draw.text((x0 - tw - 7, y - th / 2 - 2), label, fill=_INK, font=font)
    drawn = np.linspace(0, t.size - 1, min(t.size, 20000)).astype(int) if t.size else np.zeros(0, dtype=int)
    for a, b in zip(t[drawn].tolist(), p[drawn].tolist(), strict=True):  # at most 20,000 points drawn
        x, y = to_pixel(a, b)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_POINT)
    tw, _ = _text_size(draw, "target", font)
    draw.text(((x0 + x1) / 2 - tw / 2, y0 + 24), "target", fill=_INK, font=font)
    draw.text((4, y1 - 24), "prediction", fill=_INK, font=font)
    n = int(t.size)
    mae_value = float(np.abs(p - t).mean()) if n else float("nan")
    ss_tot = float(((t - t.mean()) ** 2).sum()) if n else 0.0
    r2_value = 1.0 - float(((p - t) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    draw.text((4, 4), f"parity plot: n = {n}, MAE = {mae_value:.4g}, R2 = {r2_value:.4g}", fill=_INK, font=font)
    return np.asarray(img, dtype=np.uint8).copy()


def confusion_matrix(num_classes: int, class_names: list[str] | None = None):
    """Confusion-matrix image (torchmetrics) in TensorBoard at each validation; no scalar in metrics.csv.

    Tag ``val/confusion_matrix``: rows are true classes, columns predicted ones, a cell's colour its share of the row;
    the axes are labelled with the dataset's class names.
    """
    from plugtrain.plugins.metric_classes import ConfusionMatrix

    return ConfusionMatrix(num_classes, class_names)


def parity_plot():
    """Parity-plot image (prediction vs target) in TensorBoard at each validation; no scalar in metrics.csv.

    Tag ``val/parity_plot``; the title gives n, MAE and R2 of the validation set.
    """
    from plugtrain.plugins.metric_classes import ParityPlot

    return ParityPlot()


def embeddings(max_points: int = 10000):
    """Validation embeddings and labels to TensorBoard's projector at each validation; no scalar in metrics.csv.

    Tag ``val/embeddings``; at most ``max_points`` of them (the first ones of the validation set).
    """
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        from plugtrain.core.errors import PlugtrainError

        raise PlugtrainError(f"metric embeddings: max_points must be a positive integer, got {max_points!r}")
    from plugtrain.plugins.metric_classes import Embeddings

    return Embeddings(max_points)


#: What each family of metrics fits (see ``plugtrain.Component``'s ``fits``): ``plugtrain check`` refuses a metric
#: whose task is not the run's.
_FITS_CLS = {"tasks": ("classification",), "consumes": "logits"}
_FITS_REG = {"tasks": ("regression",), "consumes": "values"}
_FITS_ML = {"tasks": ("metric_learning",), "consumes": "embeddings"}
_FITS_MLB = {"tasks": ("multilabel",), "consumes": "logits"}
_FITS_F1 = {"tasks": ("classification", "multilabel"), "consumes": "logits"}


@hookimpl
def plugtrain_metrics():
    return [
        Component("accuracy", accuracy, roles=(_CLS, "always:classification"), fits=_FITS_CLS),
        Component("top5", top5, roles=_CLS, fits=_FITS_CLS),
        Component("f1_macro", f1_macro, roles=_CLS, fits=_FITS_F1),
        # multilabel's defaults are its task's (plugtrain/plugins/tasks_multilabel.py)
        Component("map", map_macro, fits=_FITS_MLB),
        Component("f1_micro", f1_micro, fits=_FITS_MLB),
        Component("per_class_ap", per_class_ap, fits=_FITS_MLB),
        Component("mae", mae, roles=_REG, fits=_FITS_REG),
        Component("rmse", rmse, roles=_REG, fits=_FITS_REG),
        Component("r2", r2, roles=_REG, fits=_FITS_REG),
        Component("precision_at_1", precision_at_1, roles=_ML, fits=_FITS_ML),
        Component("recall_at_1", recall_at_1, fits=_FITS_ML),  # = precision_at_1: listed, not a default
        Component("map_at_r", map_at_r, roles=_ML, fits=_FITS_ML),
        Component("confusion_matrix", confusion_matrix, roles=_CLS, fits=_FITS_CLS),
        Component("parity_plot", parity_plot, roles=_REG, fits=_FITS_REG),
        Component("embeddings", embeddings, roles=_ML),  # projects any outputs: embeddings, logits or values
    ]
