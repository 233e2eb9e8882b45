"""The built-in tasks: ``classification``, ``regression`` and ``metric_learning`` (contract:
:class:`plugtrain.core.hookspecs.Task`).

A task is the shape of the problem: what a dataset's targets are and how a batch of them is made, what the backbone's
head is, what the model outputs, the default loss, metrics and primary metric, whether ``[mixup]`` applies, and what
predict, export and shards make of an output or a target. Core asks the task of the spec's ``run.task`` and never
names one. ``classification`` claims the role ``default``: the task of a spec without ``run.task``.
"""

from __future__ import annotations

import json
from typing import Any

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.hookspecs import hookimpl


class ImageOnly:
    """What every built-in task shares: augmentations change the image only, and the target is a class index."""

    outputs = "logits"
    dataset_tasks: tuple[Any, ...] = (None, "classification")
    batch_mix = False
    #: The dtype of a batch of targets (a numpy dtype name).
    target_dtype = "int64"

    def augment(self, transform: Any, image: Any, target: Any) -> tuple[Any, Any]:
        """The image through ``transform``; the target as it is."""
        return transform(image=image)["image"], target

    def collate(self, targets: list[Any]) -> Any:
        """The targets as one tensor: integers as ``int64``, anything else as ``float32``."""
        import numpy as np
        import torch

        first = targets[0]
        dtype = np.int64 if isinstance(first, (bool, int, np.integer)) else np.float32
        return torch.as_tensor(np.asarray(targets, dtype=dtype))

    def placeholder_target(self, input_shape: tuple[int, ...]) -> Any:
        """Class 0."""
        return 0

    def backbone_classes(self, num_classes: int) -> int:
        """A classifier head of ``num_classes``."""
        return num_classes

    def shard_target(self, target: Any) -> tuple[str, bytes]:
        """The class index as text, in ``.cls``."""
        return "cls", str(int(target)).encode()


def logits_problem(shape: tuple[int, ...], num_classes: int) -> str | None:
    """What is wrong with a model output of ``shape`` where ``(N, num_classes)`` logits are due, or None."""
    if len(shape) != 2:
        return f"{tuple(shape)}; expected (N, {num_classes}) logits"
    if shape[1] != num_classes:
        return f"{shape[1]} values per image but the dataset has {num_classes} classes"
    return None


def _save_figure(fig: Any, path: Any) -> str:
    """Write a matplotlib figure to ``path`` as PNG, whole or not at all."""
    from plugtrain.core.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    return str(path)


def classification_report(outputs: Any, targets: Any, class_names: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support by class name, and the confusion matrix (rows: true class,
    columns: predicted class) as counts and as shares of its row, from logits ``(N, C)`` and class indices (or
    per-class scores, reduced by argmax). A class never predicted (or absent) has precision (recall) 0."""
    import numpy as np

    c = int(outputs.shape[1])
    pred = outputs.argmax(1).numpy().astype(np.int64)
    true = (targets.argmax(1) if targets.ndim == 2 else targets).numpy().astype(np.int64)
    counts = np.bincount(true * c + pred, minlength=c * c).reshape(c, c)
    tp, support, predicted = np.diag(counts), counts.sum(1), counts.sum(0)

    def ratio(a: Any, b: Any) -> Any:
        return np.divide(a, b, out=np.zeros(np.shape(a), dtype=np.float64), where=np.asarray(b) > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    names = [class_names[k] if k < len(class_names) else str(k) for k in range(c)]
    per_class = {n: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                     "support": int(support[k])} for k, n in enumerate(names)}
    return {"per_class": per_class,
            "confusion_matrix": {"classes": names, "counts": counts.tolist(),
                                 "normalized": ratio(counts, support[:, None]).tolist()}}


def plot_confusion_matrix(counts: Any, names: list[str], path: Any) -> str:
    """A PNG of a confusion matrix: each cell coloured by its share of the row, with its count; axes named."""
    import numpy as np
    from matplotlib.figure import Figure

    m = np.asarray(counts, dtype=np.float64)
    c = len(names)
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(4 + 0.45 * c, 30)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(c), names, rotation=90 if max(map(len, names), default=0) > 3 else 0)
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = m.sum()
    acc = float(np.trace(m) / total) if total else float("nan")
    ax.set_title(f"confusion matrix (n = {int(total)}, accuracy {acc:.3f})")
    if c <= 30:
        for i, j in zip(*np.nonzero(m), strict=True):
            ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    return _save_figure(fig, path)


def regression_report(outputs: Any, targets: Any, class_names: list[str]) -> dict[str, Any]:
    """The quantiles of the absolute error (p50, p90, p99, max) over every value, and per target column by name
    when there are several."""
    import numpy as np

    pred = outputs.numpy().astype(np.float64).reshape(len(outputs), -1)
    true = targets.numpy().astype(np.float64).reshape(len(targets), -1)
    err = np.abs(pred - true)

    def quantiles(e: Any) -> dict[str, float]:
        e = e[np.isfinite(e)]
        if not e.size:
            return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
        p50, p90, p99 = np.quantile(e, [0.5, 0.9, 0.99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(e.max())}

    out: dict[str, Any] = {"abs_error": quantiles(err.ravel())}
    if err.shape[1] > 1:
        names = [class_names[k] if k < len(class_names) else str(k) for k in range(err.shape[1])]
        out["abs_error_per_target"] = {n: quantiles(err[:, k]) for k, n in enumerate(names)}
    return out


def plot_residuals(outputs: Any, targets: Any, path: Any) -> str:
    """A PNG of the residuals (prediction - target) against the prediction, with the zero line."""
    import numpy as np
    from matplotlib.figure import Figure

    pred = outputs.numpy().astype(np.float64).ravel()
    resid = pred - targets.numpy().astype(np.float64).ravel()
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.scatter(pred, resid, s=8, alpha=0.6)
    ax.axhline(0.0, color="tab:red", linewidth=1)
    ax.set_xlabel("prediction")
    ax.set_ylabel("residual (prediction - target)")
    ax.set_title(f"residuals (n = {resid.size})")
    return _save_figure(fig, path)


class Classification(ImageOnly):
    """One class per image: softmax over ``num_classes`` logits, cross-entropy, accuracy."""

    primary = ("val/accuracy", "max")
    default_loss = "CrossEntropy"
    default_metrics = ("accuracy", "top5", "f1_macro", "confusion_matrix")
    required_metrics = ("accuracy",)
    batch_mix = True

    def num_classes(self, class_names: list[str]) -> int:
        """Every class; at least two."""
        n = len(class_names)
        if n < 2:
            raise ValueError(f"has {n} class(es); classification needs >= 2")
        return n

    def check_output(self, shape: tuple[int, ...], num_classes: int) -> str | None:
        """``(N, num_classes)`` logits."""
        return logits_problem(shape, num_classes)

    def describe_outputs(self, num_classes: int, embedding_dim: int) -> str:
        return f"{num_classes} classes"

    def predict(self, output: Any, class_names: list[str], top_k: int) -> dict[str, Any]:
        """The top ``top_k`` classes by softmax probability, the first also at the top level."""
        probs = output.float().softmax(-1)
        p, idx = probs.topk(min(top_k, probs.numel()))
        top = [{"class": class_names[j] if j < len(class_names) else str(j), "index": int(j), "probability": float(q)}
               for q, j in zip(p.tolist(), idx.tolist(), strict=True)]
        return {**top[0], "top_k": top}

    def predict_text(self, result: dict[str, Any]) -> str:
        return "  ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top_k"])

    def export_output(self, num_classes: int, embedding_dim: int) -> dict[str, Any]:
        return {"name": "logits", "shape": ["batch", int(embedding_dim)],
                "meaning": "logits (apply softmax for probabilities)"}

    def tta_merge(self, outputs: list[Any]) -> Any:
        """Test-time augmentation: the views' logits -> the log of their mean softmax probabilities (logits whose
        softmax is that mean, so metrics, loss and predict read them as any output)."""
        import torch

        probs = torch.stack([o.float().softmax(-1) for o in outputs]).mean(0)
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()

    def report_outputs(self, outputs: Any, targets: Any, class_names: list[str], out_dir: Any,
                       split: str) -> dict[str, Any]:
        """Per-class figures and the confusion matrix; its picture as ``confusion-matrix-<split>.png``."""
        out = classification_report(outputs, targets, class_names)
        cm = out["confusion_matrix"]
        png = plot_confusion_matrix(cm["counts"], cm["classes"], out_dir / f"confusion-matrix-{split}.png")
        return {**out, "figures": {"confusion_matrix": png}}


class Regression(ImageOnly):
    """One or more real values per image (the dataset's target columns): regression losses on the outputs."""

    outputs = "values"
    dataset_tasks = ("regression",)
    primary = ("val/mae", "min")
    default_loss = "MSE"
    default_metrics = ("mae", "rmse", "r2", "parity_plot")
    required_metrics = ()

    def num_classes(self, class_names: list[str]) -> int:
        """One output per target column (named by ``class_names``; one when unnamed)."""
        return max(len(class_names), 1)

    def check_output(self, shape: tuple[int, ...], num_classes: int) -> str | None:
        return None if len(shape) == 2 else f"{tuple(shape)}; expected (N, features)"

    def collate(self, targets: list[Any]) -> Any:
        """The targets as one ``float32`` tensor."""
        import numpy as np
        import torch

        return torch.as_tensor(np.asarray(targets, dtype=np.float32))

    def placeholder_target(self, input_shape: tuple[int, ...]) -> Any:
        return 0.0

    def describe_outputs(self, num_classes: int, embedding_dim: int) -> str:
        return f"{num_classes} target value(s)"

    def predict(self, output: Any, class_names: list[str], top_k: int) -> dict[str, Any]:
        """The predicted values (one number for one target)."""
        values = output.tolist()
        return {"prediction": values[0] if len(values) == 1 else values}

    def predict_text(self, result: dict[str, Any]) -> str:
        return str(result["prediction"])

    def export_output(self, num_classes: int, embedding_dim: int) -> dict[str, Any]:
        return {"name": "values", "shape": ["batch", int(embedding_dim)], "meaning": "predicted values"}

    def report_outputs(self, outputs: Any, targets: Any, class_names: list[str], out_dir: Any,
                       split: str) -> dict[str, Any]:
        """Absolute-error quantiles; the residual plot as ``residuals-<split>.png``."""
        png = plot_residuals(outputs, targets, out_dir / f"residuals-{split}.png")
        return {**regression_report(outputs, targets, class_names), "figures": {"residuals": png}}

    def tta_merge(self, outputs: list[Any]) -> Any:
        """Test-time augmentation: the mean of the views' predicted values."""
        import torch

        return torch.stack([o.float() for o in outputs]).mean(0)

    def shard_target(self, target: Any) -> tuple[str, bytes]:
        """The values as a JSON list, in ``.target``."""
        import numpy as np

        return "target", json.dumps(np.asarray(target, dtype=np.float64).reshape(-1).tolist()).encode()


class MetricLearning(ImageOnly):
    """An embedding per image, learnt from class labels (ArcFace, SupCon, triplets): retrieval metrics."""

    outputs = "embeddings"
    primary = ("val/precision_at_1", "max")
    default_loss = "ArcFace"
    default_metrics = ("precision_at_1", "map_at_r", "embeddings")
    required_metrics = ()

    def num_classes(self, class_names: list[str]) -> int:
        return len(class_names)

    def backbone_classes(self, num_classes: int) -> int:
        """No classifier: the backbone's features are the embedding."""
        return 0

    def check_output(self, shape: tuple[int, ...], num_classes: int) -> str | None:
        return None if len(shape) == 2 else f"{tuple(shape)}; expected (N, features)"

    def describe_outputs(self, num_classes: int, embedding_dim: int) -> str:
        return f"{num_classes} classes, {embedding_dim}-d embeddings"

    def predict(self, output: Any, class_names: list[str], top_k: int) -> dict[str, Any]:
        raise PlugtrainError("predict gives class probabilities; a metric-learning run has none (use evaluate)")

    def predict_text(self, result: dict[str, Any]) -> str:
        return str(result)

    def export_output(self, num_classes: int, embedding_dim: int) -> dict[str, Any]:
        return {"name": "embeddings", "shape": ["batch", int(embedding_dim)], "meaning": "embeddings"}

    def tta_merge(self, outputs: list[Any]) -> Any:
        """Test-time augmentation: the mean of the views' L2-normalised embeddings (each view weighs the same)."""
        import torch

        return torch.stack([torch.nn.functional.normalize(o.float(), dim=-1) for o in outputs]).mean(0)


def classification() -> Classification:
    """One class per image (softmax over the classes): the default task."""
    return Classification()


def regression() -> Regression:
    """One or more real values per image."""
    return Regression()


def metric_learning() -> MetricLearning:
    """An embedding per image, learnt from class labels; evaluated by retrieval."""
    return MetricLearning()


@hookimpl
def plugtrain_tasks():
    from plugtrain import Component
    from plugtrain.plugins.tasks_multilabel import multilabel

    return [
        Component("classification", classification, roles=("default",)),
        Component("regression", regression),
        Component("metric_learning", metric_learning),
        Component("multilabel", multilabel),  # plugtrain/plugins/tasks_multilabel.py
    ]
