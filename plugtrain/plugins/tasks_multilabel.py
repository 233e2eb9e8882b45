"""The built-in ``multilabel`` task: any number of labels per image, one independent sigmoid per class.

Targets are multi-hot float vectors (the ``csv`` dataset's ``labels`` column, ``cat;dog``; webdataset ``.json``
lists of class indices): a batch of them is a ``float32 (N, C)`` tensor, and ``[mixup]`` mixes them as they are.
The model outputs one logit per class; a class is predicted when its sigmoid reaches ``threshold`` (``[task]
threshold``, also the F1 metrics' threshold). Defaults: ``BCEWithLogits`` (``ASL`` for many negatives per image),
metrics ``map`` (primary), ``f1_micro``, ``f1_macro`` and ``per_class_ap``; ``evaluate`` adds each class's AP by
name (``"per_class"``), ``predict`` lists every class at or above the threshold with its probability, and an export
outputs the logits with a sidecar that says to apply a sigmoid to each. Registered by
:func:`plugtrain.plugins.tasks.plugtrain_tasks`.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from annotated_types import Interval

from plugtrain.plugins.tasks import ImageOnly, logits_problem

_PER_CLASS_AP = re.compile(r"/per_class_ap/(\d+)$")


class Multilabel(ImageOnly):
    """Several labels per image: a sigmoid per class, binary cross-entropy, mean average precision."""

    outputs = "logits"
    dataset_tasks = ("multilabel",)
    primary = ("val/map", "max")
    default_loss = "BCEWithLogits"
    default_metrics = ("map", "f1_micro", "f1_macro", "per_class_ap")
    required_metrics = ("map",)
    batch_mix = True

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)
        self.classes = 0  # set by num_classes(): the length of a placeholder target

    def num_classes(self, class_names: list[str]) -> int:
        """One output per class; at least one."""
        n = len(class_names)
        if n < 1:
            raise ValueError("has no class; multilabel needs >= 1")
        self.classes = n
        return n

    def check_output(self, shape: tuple[int, ...], num_classes: int) -> str | None:
        """``(N, num_classes)`` logits."""
        return logits_problem(shape, num_classes)

    def collate(self, targets: list[Any]) -> Any:
        """The multi-hot targets as one ``float32 (N, C)`` tensor."""
        import numpy as np
        import torch

        return torch.as_tensor(np.stack([np.asarray(t, dtype=np.float32).reshape(-1) for t in targets]))

    def placeholder_target(self, input_shape: tuple[int, ...]) -> Any:
        """No label."""
        import numpy as np

        return np.zeros(max(self.classes, 1), dtype=np.float32)

    def fold_targets(self, targets: Any) -> Any:
        """Random folds: a multi-hot vector has no single class to stratify on."""
        return None

    def in_subset(self, target: Any, label_map: dict[int, int]) -> bool:
        """Every image stays in a ``data.class_subset`` run: one with none of the kept classes is a negative of each."""
        return True

    def relabel(self, target: Any, label_map: dict[int, int]) -> Any:
        """The kept classes' columns, in their new order (``data.class_subset``)."""
        import numpy as np

        out = np.zeros(len(label_map), dtype=np.float32)
        for old, new in label_map.items():
            out[new] = target[old]
        return out

    def describe_outputs(self, num_classes: int, embedding_dim: int) -> str:
        return f"{num_classes} labels (sigmoid each, threshold {self.threshold:g})"

    def tta_merge(self, outputs: list[Any]) -> Any:
        """Test-time augmentation: the logit of the views' mean sigmoid probability per class (its sigmoid is that
        mean, so metrics, loss and predict read it as any output)."""
        import torch

        probs = torch.stack([o.float().sigmoid() for o in outputs]).mean(0)
        return torch.logit(probs.double(), eps=1e-12).float()

    def predict(self, output: Any, class_names: list[str], top_k: int) -> dict[str, Any]:
        """Every class whose probability reaches the threshold (most probable first), and the ``top_k`` most
        probable classes whatever the threshold."""
        probs = output.float().reshape(-1).sigmoid()
        order = probs.argsort(descending=True).tolist()

        def entry(j: int) -> dict[str, Any]:
            return {"class": class_names[j] if j < len(class_names) else str(j), "index": int(j),
                    "probability": float(probs[j])}

        return {"labels": [entry(j) for j in order if float(probs[j]) >= self.threshold],
                "threshold": self.threshold, "top_k": [entry(j) for j in order[:max(top_k, 1)]]}

    def predict_text(self, result: dict[str, Any]) -> str:
        if not result["labels"]:
            return f"(no class at probability >= {result['threshold']:g})"
        return "  ".join(f"{t['class']} {t['probability']:.3f}" for t in result["labels"])

    def export_output(self, num_classes: int, embedding_dim: int) -> dict[str, Any]:
        return {"name": "logits", "shape": ["batch", int(embedding_dim)],
                "meaning": f"logits (apply a sigmoid to each for per-class probabilities, not softmax; a class is "
                           f"predicted at probability >= {self.threshold:g})"}

    def shard_target(self, target: Any) -> tuple[str, bytes]:
        """The sample's class indices as a JSON list, in ``.json``."""
        import numpy as np

        return "json", json.dumps(np.flatnonzero(np.asarray(target).reshape(-1) > 0.5).tolist()).encode()

    def report(self, metrics: dict[str, float], class_names: list[str]) -> dict[str, Any]:
        """Each class's average precision by name (``"per_class"``), from the ``per_class_ap`` metric."""
        per_class: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            m = _PER_CLASS_AP.search(key)
            if m:
                i = int(m.group(1))
                name = class_names[i] if i < len(class_names) else str(i)
                per_class[name] = {"ap": value}
        return {"per_class": per_class} if per_class else {}


def multilabel(threshold: Annotated[float, Interval(gt=0, lt=1)] = 0.5) -> Multilabel:
    """Several labels per image (a sigmoid per class); a class is predicted at probability >= ``threshold``."""
    return Multilabel(threshold)

