"""The ``torch.nn.Module`` classes behind the built-in losses (``plugtrain/plugins/losses.py``).

They live here, not in the plugin module, because this module imports torch at the top: the plugin imports it only
inside its factories, so that listing losses stays cheap, while these classes stay importable, subclassable and
testable (``from plugtrain.plugins.loss_modules import CrossEntropy``). Attribute and buffer names are the
``state_dict`` keys of existing checkpoints: keep them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["AsymmetricLoss", "BCEWithLogits", "CrossEntropy", "Distillation", "KLDiv", "MetricLearning", "Regression",
           "class_targets"]


def class_targets(outputs: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Targets as an ``(N, C)`` float distribution: indices become (smoothed) one-hot, soft targets stay."""
    if targets.ndim == outputs.ndim and targets.is_floating_point():
        if targets.shape != outputs.shape:
            raise ValueError(f"soft targets of shape {tuple(targets.shape)} do not match outputs "
                             f"{tuple(outputs.shape)}")
        return targets.to(outputs.dtype)
    if targets.ndim != 1 or targets.shape[0] != outputs.shape[0]:
        raise ValueError(f"targets of shape {tuple(targets.shape)} are neither class indices (N,) nor soft "
                         f"targets (N, C) for outputs of shape {tuple(outputs.shape)}")
    onehot = F.one_hot(targets.long(), outputs.shape[-1]).to(outputs.dtype)
    if smoothing:
        onehot = onehot * (1.0 - smoothing) + smoothing / outputs.shape[-1]
    return onehot


class CrossEntropy(torch.nn.Module):
    """``F.cross_entropy`` on logits; class indices or soft (N, C) targets."""

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = -100,
                 weight: list[float] | None = None) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        self.register_buffer("weight", None if weight is None else torch.tensor(weight, dtype=torch.float32))

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if targets.is_floating_point() and targets.ndim == outputs.ndim:
            targets = targets.to(outputs.dtype)
        else:
            targets = targets.long()
        return F.cross_entropy(outputs, targets, weight=self.weight, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class KLDiv(torch.nn.Module):
    """KL(target || softmax(outputs)), batch-mean, on log-softmax of the logits."""

    def __init__(self, label_smoothing: float = 0.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.temperature = float(temperature)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float() / self.temperature
        target = class_targets(outputs, targets, self.label_smoothing)
        return F.kl_div(F.log_softmax(outputs, dim=-1), target, reduction="batchmean")


class BCEWithLogits(torch.nn.Module):
    """Binary cross-entropy on logits: one-hot from class indices, or float (multi-)label targets."""

    def __init__(self, pos_weight: list[float] | float | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("pos_weight",
                             None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32))

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if outputs.ndim == 2 and outputs.shape[1] == 1 and targets.ndim == 1:
            outputs = outputs.squeeze(1)  # binary: one logit per sample, 0/1 targets
        if outputs.ndim == 1:
            target = targets.to(outputs.dtype)
            if self.label_smoothing:
                target = target * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        elif targets.is_floating_point() and targets.ndim == outputs.ndim:
            target = targets.to(outputs.dtype)  # multi-label or soft targets (mixup)
            if self.label_smoothing:
                target = target * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        else:
            target = class_targets(outputs, targets, self.label_smoothing)
        return F.binary_cross_entropy_with_logits(outputs, target, pos_weight=self.pos_weight)


class AsymmetricLoss(torch.nn.Module):
    """Asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021), per element:

    ``-[y (1 - p)^gamma_pos log(p) + (1 - y) p_m^gamma_neg log(1 - p_m)]`` with ``p = sigmoid(logit)`` and the
    shifted probability ``p_m = max(p - clip, 0)``; the mean over samples and classes. Soft (mixed) targets
    interpolate both terms."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        target = class_targets(outputs, targets)  # multi-hot as given; class indices become one-hot
        p = torch.sigmoid(outputs)
        q = (1.0 - p + self.clip).clamp(max=1.0) if self.clip > 0 else 1.0 - p  # 1 - p_m
        pos = target * torch.log(p.clamp(min=self.eps))
        neg = (1.0 - target) * torch.log(q.clamp(min=self.eps))
        if self.gamma_neg or self.gamma_pos:
            pt = p * target + q * (1.0 - target)  # p for positives, 1 - p_m for negatives
            # base clamped off 0: a gamma below 1 would otherwise give an infinite gradient where p_m = 0
            weight = (1.0 - pt).clamp(min=self.eps).pow(self.gamma_pos * target + self.gamma_neg * (1.0 - target))
            pos, neg = pos * weight, neg * weight
        return -(pos + neg).mean()

    def extra_repr(self) -> str:
        return f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}"


class Regression(torch.nn.Module):
    """A regression criterion where ``(N, 1)`` outputs meet ``(N,)`` targets."""

    def __init__(self, criterion: torch.nn.Module) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
            outputs = outputs.squeeze(-1)
        return self.criterion(outputs, targets.to(outputs.dtype))


class MetricLearning(torch.nn.Module):
    """A pytorch-metric-learning loss (and optional miner) called as ``loss(embeddings, labels)``."""

    def __init__(self, loss: torch.nn.Module, miner: torch.nn.Module | None = None, gather: bool = False,
                 name: str = "") -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.gather = gather
        self.name = name

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point() or targets.ndim != 1:
            raise ValueError(
                f"{self.name or 'this loss'} is a metric-learning loss: it needs integer class labels (N,), got "
                f"{targets.dtype} targets of shape {tuple(targets.shape)} (mixup/cutmix soft targets cannot be "
                "used with metric-learning losses)"
            )
        if outputs.ndim != 2:
            raise ValueError(f"{self.name or 'this loss'} needs embeddings of shape (N, D), got outputs of shape "
                             f"{tuple(outputs.shape)}")
        # in float32 even inside an autocast region: the angular margins (acos near +-1) break in half precision
        with torch.autocast(device_type=outputs.device.type, enabled=False):
            return self._loss(outputs.float(), targets.long())

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        world = 1
        if self.gather and torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
        if world > 1:
            from pytorch_metric_learning.utils.distributed import gather

            embeddings, labels, _ = gather(embeddings, labels)  # local first; the other ranks' are detached
        indices = self.miner(embeddings, labels) if self.miner is not None else None
        loss = self.loss(embeddings, labels, indices)
        if world > 1:
            # Each rank's gradient reaches only its own embeddings and DDP averages over ranks: scale the
            # gradient by the world size (as pytorch-metric-learning's DistributedLossWrapper does) while
            # keeping the reported value the plain loss.
            loss = loss + (world - 1) * (loss - loss.detach())
        return loss


class Distillation(torch.nn.Module):
    """Knowledge distillation (Hinton et al. 2015): ``(1 - alpha) * hard(outputs, targets) + alpha * T^2 *
    KL(softmax(teacher(inputs) / T) || softmax(outputs / T))``, batch-mean.

    It asks the runtime for the model's inputs (``plugtrain_takes_inputs``). The teacher is held outside the module
    tree (not a submodule): it is never in ``state_dict()`` (so never in a checkpoint), ``parameters()`` (never in an
    optimizer, DDP or FSDP) nor switched by ``train()``; it stays in eval mode, runs under ``no_grad`` inside the
    caller's autocast and moves to the inputs' device on first use. Called without inputs (the validation loss), it
    is the hard loss alone, comparable with a run trained without a teacher.
    """

    plugtrain_takes_inputs = True

    def __init__(self, teacher: torch.nn.Module, hard: torch.nn.Module, temperature: float = 4.0,
                 alpha: float = 0.5) -> None:
        super().__init__()
        self.hard = hard
        self.temperature, self.alpha = float(temperature), float(alpha)
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # bypasses Module.__setattr__: not a submodule (see the class docstring)
        self.teacher_calls = 0  #: teacher forwards so far (diagnostics)

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs`` (float32, no gradient), the teacher moved to their device first."""
        teacher = self.teacher
        first = next(teacher.parameters(), None)
        if first is not None and first.device != inputs.device:
            teacher.to(inputs.device)
        if teacher.training:
            teacher.eval()
        with torch.no_grad():
            out = teacher(inputs)
        self.teacher_calls += 1
        return (out[0] if isinstance(out, (tuple, list)) else out).float()

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None = None
                ) -> torch.Tensor:
        hard = self.hard(outputs, targets)
        if inputs is None or self.alpha == 0.0:
            return hard
        teacher = self.teacher_logits(inputs)
        if teacher.shape != outputs.shape:
            raise ValueError(f"the teacher outputs {tuple(teacher.shape)} for the student's {tuple(outputs.shape)}")
        t = self.temperature
        soft = F.kl_div(F.log_softmax(outputs.float() / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                        reduction="batchmean", log_target=True) * (t * t)
        return (1.0 - self.alpha) * hard + self.alpha * soft

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"
