"""Losses: torch.nn criteria for classification, multi-label and regression, pytorch-metric-learning for metric
learning.

Every loss is a ``torch.nn.Module`` called as ``loss(outputs, targets)`` that returns a scalar tensor; outputs are
cast to float32 first (so that bf16/fp16 outputs work outside autocast too).

* Classification (``CrossEntropy``, ``LabelSmoothing``, ``KLDiv``, ``BCEWithLogits``): ``outputs`` are logits
  ``(N, C)``; ``targets`` are class indices ``(N,)`` **or** soft targets ``(N, C)`` (float probabilities, as mixup
  and cutmix produce).
* Multi-label (``BCEWithLogits``, ``ASL``): ``outputs`` are logits ``(N, C)``, one independent sigmoid per class;
  ``targets`` are multi-hot floats ``(N, C)`` (mixed ones too, from mixup/cutmix).
* Regression (``MSE``, ``L1``, ``SmoothL1``, ``Huber``): ``(N, 1)`` outputs are squeezed to meet ``(N,)`` targets.
* Metric learning (``SupCon``, ``TripletMargin``, ``ArcFace``, ``SubCenterArcFace``, ``CosFace``), from
  pytorch-metric-learning: ``outputs`` are embeddings ``(N, D)`` and ``targets`` integer labels ``(N,)``; soft
  targets are refused (no mixup with these losses). With several views of each image, the runtime stacks the views
  along the batch and repeats the labels: positives are found from the labels. ``ArcFace``, ``SubCenterArcFace``
  and ``CosFace`` own their class centres (``loss.parameters()``); they need the ``num_classes`` and
  ``embedding_dim`` (the backbone's output width) context, and the runtime trains their parameters. Under
  ``torch.distributed``, ``SupCon`` and ``TripletMargin`` gather the embeddings of every rank (pytorch-metric-
  learning's all-gather, non-efficient mode) so that pairs span the global batch (``gather_across_ranks``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

from plugtrain import Component, hookimpl

#: A probability / smoothing factor: a number in [0, 1].
Unit = Annotated[float, Interval(ge=0, le=1)]
#: Class weights: non-negative numbers.
Weights = list[Annotated[float, Ge(0)]]
#: A loss's ``weight``: class weights, or "balanced" (from the train split's class counts, resolved by the build).
ClassWeights = Weights | Literal["balanced"]


# -- classification --------------------------------------------------------------------------------------------------
def cross_entropy(label_smoothing: Unit = 0.0, ignore_index: int = -100, weight: ClassWeights | None = None):
    """Cross-entropy on logits (``F.cross_entropy``); class-index or soft (N, C) targets, optional label smoothing."""
    from plugtrain.plugins.loss_modules import CrossEntropy

    return CrossEntropy(label_smoothing, ignore_index, weight)


def label_smoothing(label_smoothing: Unit = 0.1, weight: ClassWeights | None = None):
    """Cross-entropy with label smoothing (default 0.1); class-index or soft (N, C) targets."""
    from plugtrain.plugins.loss_modules import CrossEntropy

    return CrossEntropy(label_smoothing, -100, weight)


def kl_div(label_smoothing: Unit = 0.0, temperature: Annotated[float, Gt(0)] = 1.0):
    """KL divergence between the target distribution (one-hot, smoothed, or soft) and softmax(logits / T)."""
    from plugtrain.plugins.loss_modules import KLDiv

    return KLDiv(label_smoothing, temperature)


def bce_with_logits(pos_weight: Weights | Annotated[float, Ge(0)] | None = None, label_smoothing: Unit = 0.0,
                    num_classes: int = 0):
    """Binary cross-entropy on logits: class indices become one-hot; multi-hot or soft (N, C) targets as given.

    ``pos_weight`` weighs each class's positives (a list, one per class) or every class's alike (a number): above 1
    for rare labels (e.g. negatives / positives of the class)."""
    from plugtrain.plugins.loss_modules import BCEWithLogits

    if isinstance(pos_weight, list) and num_classes and len(pos_weight) != num_classes:
        from plugtrain.core.errors import PlugtrainError

        raise PlugtrainError(f"loss BCEWithLogits: pos_weight lists {len(pos_weight)} weights but the run has "
                             f"{num_classes} classes (give one per class, or one number for all)")
    return BCEWithLogits(pos_weight, label_smoothing)


def asl(gamma_neg: Annotated[float, Ge(0)] = 4.0, gamma_pos: Annotated[float, Ge(0)] = 0.0,
        clip: Annotated[float, Interval(ge=0, lt=1)] = 0.05, eps: Annotated[float, Gt(0)] = 1e-8):
    """Asymmetric loss (ASL, Ridnik et al. 2021) for multi-label classification.

    Focal down-weighting, harder on easy negatives (``gamma_neg`` > ``gamma_pos``), and negatives with p < ``clip``
    dropped (probability shifting). Mean over samples and classes; with ``gamma_neg = gamma_pos = clip = 0`` it is
    ``BCEWithLogits``."""
    from plugtrain.plugins.loss_modules import AsymmetricLoss

    return AsymmetricLoss(gamma_neg, gamma_pos, clip, eps)


# -- regression ------------------------------------------------------------------------------------------------------
def mse():
    """Mean squared error (``torch.nn.MSELoss``) for regression."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.MSELoss())


def l1():
    """Mean absolute error (``torch.nn.L1Loss``) for regression."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.L1Loss())


def smooth_l1(beta: Annotated[float, Ge(0)] = 1.0):
    """Smooth L1 (``torch.nn.SmoothL1Loss``): quadratic below ``beta``, linear above."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.SmoothL1Loss(beta=beta))


def huber(delta: Annotated[float, Gt(0)] = 1.0):
    """Huber loss (``torch.nn.HuberLoss``): quadratic below ``delta``, linear above."""
    import torch

    from plugtrain.plugins.loss_modules import Regression

    return Regression(torch.nn.HuberLoss(delta=delta))


# -- metric learning (pytorch-metric-learning) ------------------------------------------------------------------------
def _needs_classes(name: str, num_classes: int, embedding_dim: int) -> None:
    from plugtrain.core.errors import PlugtrainError

    if not num_classes or num_classes < 2 or not embedding_dim or embedding_dim < 1:
        raise PlugtrainError(
            f"loss {name} needs the number of classes and the embedding width (got num_classes={num_classes}, "
            f"embedding_dim={embedding_dim}); use it with a classification dataset and a backbone that outputs "
            "embeddings (set backbone.embedding_dim)"
        )


def supcon(temperature: Annotated[float, Gt(0)] = 0.1, gather_across_ranks: bool = True):
    """Supervised contrastive loss (pytorch-metric-learning ``SupConLoss``) on embeddings and labels."""
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    return MetricLearning(losses.SupConLoss(temperature=temperature), None, gather_across_ranks, "SupCon")


def triplet_margin(
    margin: Annotated[float, Ge(0)] = 0.05,
    swap: bool = False,
    smooth_loss: bool = False,
    triplets_per_anchor: Annotated[int, Ge(1)] | Literal["all"] = "all",
    miner: Literal["none", "all", "hard", "semihard", "easy"] = "none",
    miner_margin: Annotated[float, Ge(0)] | None = None,
    gather_across_ranks: bool = True,
):
    """Triplet margin loss (pytorch-metric-learning), optionally on triplets from a ``TripletMarginMiner``.

    ``miner`` picks the triplets (``none``: every triplet in the batch; ``hard``/``semihard``/``easy``/``all``:
    ``TripletMarginMiner(margin=miner_margin or margin, type_of_triplets=miner)``).
    """
    from pytorch_metric_learning import losses, miners

    from plugtrain.plugins.loss_modules import MetricLearning

    loss = losses.TripletMarginLoss(margin=margin, swap=swap, smooth_loss=smooth_loss,
                                    triplets_per_anchor=triplets_per_anchor)
    mine = None
    if miner != "none":
        mine = miners.TripletMarginMiner(margin=margin if miner_margin is None else miner_margin,
                                         type_of_triplets=miner)
    return MetricLearning(loss, mine, gather_across_ranks, "TripletMargin")


def arcface(num_classes: int, embedding_dim: int, margin: Annotated[float, Ge(0)] = 28.6,
            scale: Annotated[float, Gt(0)] = 64.0):
    """ArcFace (additive angular margin, pytorch-metric-learning ``ArcFaceLoss``); ``margin`` in degrees.

    Owns the class centres ``W`` (embedding_dim x num_classes), trained with the model (or by ``[loss.optimizer]``).
    """
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    _needs_classes("ArcFace", num_classes, embedding_dim)
    return MetricLearning(
        losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, scale=scale),
        None, False, "ArcFace")


def subcenter_arcface(num_classes: int, embedding_dim: int, margin: Annotated[float, Ge(0)] = 28.6,
                      scale: Annotated[float, Gt(0)] = 64.0, sub_centers: Annotated[int, Ge(1)] = 3):
    """Sub-center ArcFace (pytorch-metric-learning ``SubCenterArcFaceLoss``): ``sub_centers`` centres per class."""
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    _needs_classes("SubCenterArcFace", num_classes, embedding_dim)
    return MetricLearning(
        losses.SubCenterArcFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, scale=scale,
                                    sub_centers=sub_centers),
        None, False, "SubCenterArcFace")


def cosface(num_classes: int, embedding_dim: int, margin: Annotated[float, Ge(0)] = 0.35,
            scale: Annotated[float, Gt(0)] = 64.0):
    """CosFace (large margin cosine loss, pytorch-metric-learning ``CosFaceLoss``); owns its class centres."""
    from pytorch_metric_learning import losses

    from plugtrain.plugins.loss_modules import MetricLearning

    _needs_classes("CosFace", num_classes, embedding_dim)
    return MetricLearning(
        losses.CosFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=margin, scale=scale),
        None, False, "CosFace")


# -- knowledge distillation ----------------------------------------------------------------------------------------
_HUB = "hf-hub:"


def distillation(teacher: str, temperature: Annotated[float, Gt(0)] = 4.0, alpha: Unit = 0.5,
                 hard: str = "CrossEntropy", hard_params: dict[str, Any] | None = None, num_classes: int = 0,
                 embedding_dim: int = 0):
    """Knowledge distillation from a ``teacher``: ``(1 - alpha) * hard + alpha * T^2 * KL(teacher || student)`` at
    temperature ``T``.

    ``teacher``: a finished run directory (relative to the spec's folder; its ``best.pt``, loaded with
    ``weights_only=True`` as ``plugtrain predict`` opens it) or a timm model on the Hugging Face Hub,
    ``"hf-hub:ORG/NAME[@REVISION]"`` (from the cache when ``HF_HUB_OFFLINE`` is set). It must output one logit per
    class of this run's dataset and take this run's inputs (channels, size, normalisation). ``hard`` names the loss
    on the labels (a classification loss, built with ``hard_params``). The teacher is never saved in the student's
    checkpoints nor trained; the validation loss is the hard loss alone."""
    from plugtrain.core.errors import PlugtrainError
    from plugtrain.core.registry import get_registry
    from plugtrain.plugins.loss_modules import Distillation

    if hard == "Distillation":
        raise PlugtrainError("loss Distillation: hard cannot be Distillation itself (name a classification loss, e.g. "
                             "CrossEntropy)")
    comp = get_registry().get("losses", hard)
    context = {k: v for k, v in (("num_classes", num_classes), ("embedding_dim", embedding_dim))
               if k in {p.name for p in comp.params} or comp.accepts_any_kwargs}
    hard_loss = comp.build(dict(hard_params or {}), **context)
    model, classes = _teacher(teacher)
    if num_classes and classes != num_classes:
        raise PlugtrainError(f"loss.teacher: {teacher} outputs {classes} classes but this run's dataset has "
                             f"{num_classes}: distil from a teacher trained on the same classes")
    return Distillation(model, hard_loss, temperature, alpha)


def _teacher(teacher: str) -> tuple[Any, int]:
    """The teacher model (eval mode, on the CPU) and its number of classes; a bad reference is one PlugtrainError.
    Global random state is left as it was (opening a run seeds torch)."""
    import torch

    from plugtrain.core.errors import PlugtrainError

    with torch.random.fork_rng(devices=[]):
        if teacher.startswith(_HUB):
            return _hub_teacher(teacher)
        from plugtrain.core.runtime.rundir import check_context
        from plugtrain.inference import LoadedRun

        root = check_context().spec_relative(teacher)
        problem = teacher_run_problem(root)
        if problem:
            raise PlugtrainError(f"loss.teacher: {_shown(teacher, root)}: {problem}")
        run = LoadedRun(root, device="cpu")
        return run.model, len(run.class_names)


def _hub_need(teacher: str) -> Any:
    from plugtrain.hub import HubFiles

    repo, _, revision = teacher[len(_HUB):].partition("@")
    return HubFiles(repo, ("model.safetensors", "pytorch_model.bin"), revision or None, optional=("config.json",),
                    param="teacher", key="loss.teacher", label=teacher)


def _hub_teacher(teacher: str) -> tuple[Any, int]:
    """A timm model from the hub (``timm.create_model("hf-hub:...", pretrained=True)``), fetched through
    :func:`plugtrain.hub.download` so that a miss is one readable line."""
    import timm

    from plugtrain.core.errors import PlugtrainError
    from plugtrain.hub import download

    need = _hub_need(teacher)
    if not need.repo or "@" in teacher and not need.revision:
        raise PlugtrainError(f"loss.teacher: {teacher!r}: write \"hf-hub:ORG/NAME\" or \"hf-hub:ORG/NAME@REVISION\"")
    download(need)
    try:
        model = timm.create_model(teacher, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - a repository that is not a timm model is the user's input
        from plugtrain.core.errors import first_line

        raise PlugtrainError(f"loss.teacher: {teacher} is not a timm model: {type(exc).__name__}: "
                             f"{first_line(exc)}") from None
    return model.eval(), int(getattr(model, "num_classes", 0) or 0)


def _shown(teacher: str, root: Any) -> str:
    """The teacher as written, and where it was looked for when that is another path (relative to the spec)."""
    return repr(teacher) if str(root) == teacher else f"{teacher!r} ({root})"


def teacher_run_problem(root: Any) -> str | None:
    """Why the folder ``root`` is not a finished classification run to distil from (None: it is one): it must hold
    ``spec.toml`` and ``checkpoints/best.pt``, and its ``last.pt`` must be at the end of its last epoch."""
    from pathlib import Path

    import torch

    root = Path(root)
    if not root.exists():
        return "no such run directory"
    if not root.is_dir():
        from plugtrain.inference import what_file

        return what_file(root)
    if not (root / "spec.toml").is_file():
        return "not a run directory (no spec.toml): name the folder of a finished training run"
    best, last = root / "checkpoints" / "best.pt", root / "checkpoints" / "last.pt"
    if not best.is_file() or not last.is_file():
        return "not a finished run (no checkpoints/best.pt and last.pt): let its training finish first"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        meta = state.get("meta") or {}
        epochs = int(((meta.get("spec") or {}).get("run") or {}).get("epochs", 0))
        done = int(state.get("epoch", 0)) >= epochs and not int(state.get("batch_in_epoch", 0) or 0)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is bad input
        return f"its checkpoints/last.pt cannot be read ({type(exc).__name__})"
    if not done:
        return (f"not a finished run (stopped at epoch {state.get('epoch')} of {epochs}): resume it to the end "
                "(plugtrain train SPEC --resume auto) or distil from a finished one")
    task = meta.get("task", "classification")
    if task != "classification":
        return f"a {task} run: a teacher must be a classification run (its logits are distilled)"
    return None


def validate(factory: Any, params: dict[str, Any], defaults: dict[str, Any],
             context: Any = None) -> list[tuple[str | None, str, bool]]:
    """``plugtrain check`` of ``Distillation`` (this module's ``PLUGTRAIN_VALIDATE``): ``teacher`` must be a finished
    classification run (relative to the spec's folder, or one a spec queued before this one writes) or hub weights
    in the cache (missing: a warning, an error when ``HF_HUB_OFFLINE`` is set); ``hard`` must not be itself."""
    from plugtrain.core.runtime.rundir import CheckContext

    if getattr(factory, "func", factory) is not distillation:
        return []
    context = context if context is not None else CheckContext()
    problems: list[tuple[str | None, str, bool]] = []
    if params.get("hard") == "Distillation":
        problems.append(("hard", "cannot be Distillation itself: name a classification loss, e.g. CrossEntropy",
                         False))
    teacher = params.get("teacher")
    if not isinstance(teacher, str):
        return problems
    if teacher.startswith(_HUB):
        from plugtrain.hub import cached_file, hub_cache_dir, hub_offline

        need = _hub_need(teacher)
        if not need.repo or ("@" in teacher and not need.revision):
            return [*problems, ("teacher", f"{teacher!r}: write \"hf-hub:ORG/NAME\" or \"hf-hub:ORG/NAME@REVISION\"",
                                False)]
        try:
            cached = cached_file(need)
        except Exception:  # noqa: BLE001 - an unreadable cache is the build's to report
            return problems
        if cached is None:
            offline = hub_offline()
            problems.append(("teacher", f"{teacher} is not in the Hugging Face cache ({hub_cache_dir()})"
                             + (" and HF_HUB_OFFLINE is set, so training cannot get it" if offline else
                                ": training will download it"), not offline))
        return problems
    root = context.spec_relative(teacher)
    if not root.exists() and context.written_by_queue(root):
        return problems
    problem = teacher_run_problem(root)
    if problem:
        problems.append(("teacher", f"{_shown(teacher, root)}: {problem}", False))
    return problems


PLUGTRAIN_VALIDATE = validate


#: Loss names whose factories want embeddings and integer labels (metric learning).
METRIC_LEARNING_LOSSES = ("SupCon", "TripletMargin", "ArcFace", "SubCenterArcFace", "CosFace")


#: What each family of losses fits (see ``plugtrain.Component``'s ``fits``): ``plugtrain check`` refuses a loss whose
#: task is not the run's, several views (``data.num_views > 1``) with a loss that ignores them, or a
#: ``[loss.optimizer]`` for a loss without parameters.
_CLASSIFICATION = {"tasks": ("classification",), "consumes": "logits", "views": False, "parameters": False}
_MULTILABEL = {**_CLASSIFICATION, "tasks": ("multilabel",)}
_BINARY = {**_CLASSIFICATION, "tasks": ("classification", "multilabel")}
_REGRESSION = {"tasks": ("regression",), "consumes": "values", "views": False, "parameters": False}
_METRIC_LEARNING = {"tasks": ("metric_learning",), "consumes": "embeddings", "views": True, "parameters": False}
_CENTRES = {**_METRIC_LEARNING, "parameters": True}


@hookimpl
def plugtrain_losses() -> list[Any]:
    return [
        Component("CrossEntropy", cross_entropy, fits=_CLASSIFICATION),
        Component("LabelSmoothing", label_smoothing, fits=_CLASSIFICATION),
        Component("KLDiv", kl_div, fits=_CLASSIFICATION),
        Component("BCEWithLogits", bce_with_logits, fits=_BINARY),
        Component("ASL", asl, fits=_MULTILABEL),
        Component("MSE", mse, fits=_REGRESSION),
        Component("L1", l1, fits=_REGRESSION),
        Component("SmoothL1", smooth_l1, fits=_REGRESSION),
        Component("Huber", huber, fits=_REGRESSION),
        Component("SupCon", supcon, fits=_METRIC_LEARNING),
        Component("TripletMargin", triplet_margin, fits=_METRIC_LEARNING),
        Component("ArcFace", arcface, fits=_CENTRES),
        Component("SubCenterArcFace", subcenter_arcface, fits=_CENTRES),
        Component("CosFace", cosface, fits=_CENTRES),
        Component("Distillation", distillation, fits=_CLASSIFICATION),
    ]
