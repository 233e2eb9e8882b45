"""A finished run, as ``evaluate``, ``predict``, ``export`` and the Python API open it: its spec, a checkpoint, the
weights chosen from it (the model, its EMA or its SWA average), a one-process device, and predict's preprocessing.

Preprocessing is validation's, step for step: a file is read by the run's dataset's own ``read_image`` (same decoder,
channels and size handling as its samples; :func:`plugtrain.plugins.datasets.decode.read_image_file` for a dataset
without one), then the run's validation pipeline (``build_transform(spec, "val")``), the collate, and
:class:`~plugtrain.core.runtime.step.ModelInput`'s normalisation, under the run's precision (as ``evaluate``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.core.runtime import distributed, rundir
from plugtrain.core.spec import load_spec

#: What ``--weights`` chooses: the trained model, its EMA (``trainer.ema``), its SWA average (``trainer.swa``).
WEIGHTS: tuple[str, ...] = ("model", "ema", "swa")
_LABEL = {"model": "model weights", "ema": "EMA weights", "swa": "SWA weights"}


def open_run(run_dir: str | os.PathLike[str]) -> tuple[Path, Any]:
    """``(RUN_DIR, its spec.toml loaded)``; a missing directory or spec is bad input."""
    root = Path(run_dir)
    spec_path = root / "spec.toml"
    if root.exists() and not root.is_dir():
        raise PlugtrainError(f"{run_dir}: {what_file(root)}")
    if not root.is_dir():
        raise PlugtrainError(f"{run_dir}: no such run directory")
    if not spec_path.is_file():
        raise PlugtrainError(f"{run_dir}: not a run directory (no spec.toml)")
    with rundir.without_start_inputs():  # its weights come from its checkpoints, not from what it started from
        return root, load_spec(spec_path)


def what_file(path: Path) -> str:
    """What a file given where a run directory is expected is, and what to give instead: the message after
    ``PATH: `` (``plugtrain predict`` of a safetensors export, a checkpoint, a sidecar, a spec, ...)."""
    name = path.name.lower()
    run = next((p for p in path.parents if (p / "spec.toml").is_file()), None) or _exported_from(path)
    the_run = f"its run directory ({run})" if run else "the run directory it came from"
    if name.endswith(".safetensors"):
        return (f"a safetensors file holds weights only (no graph, no preprocessing), not a run directory: predict "
                f"and load_run take {the_run}, or an exported .onnx / .pt2 model with its sidecar (plugtrain export "
                "RUN_DIR --format onnx)")
    if name.endswith((".onnx", ".pt2")):
        return (f"an exported model, not a run directory: predict and load_run take it; evaluate and export take "
                f"{the_run}")
    if name.endswith(".pt"):
        return f"a checkpoint file, not a run directory: give {the_run} and --checkpoint {path}"
    if name.endswith((".onnx.json", ".pt2.json", ".safetensors.json")):
        return (f"the sidecar of an exported model, not a run directory: give the model file beside it, "
                f"{path.with_name(path.name[:-len('.json')])}")
    if name.endswith(".toml"):
        return "a spec file, not a run directory: train it (plugtrain train), then give the run directory it makes"
    return "a file, not a run directory (a run directory holds spec.toml and checkpoints/)"


def _exported_from(path: Path) -> str | None:
    """The ``run_dir`` an exported file's sidecar records, if it is there and readable."""
    import json

    try:
        run = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8")).get("run_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, str) and Path(run, "spec.toml").is_file() else None


def rebuilt_backbone(spec: Any) -> Any:
    """The spec's ``[backbone]`` without the weights it started from (its ``pretrained`` parameter): the weights of a
    finished run come from its checkpoint, so the file or hub weights it was fine-tuned from need not be there."""
    import attrs

    params = {k: v for k, v in spec.backbone.params.items() if k != "pretrained"}
    return attrs.evolve(spec.backbone, params=params)


def build_for_eval(spec: Any, env: Any) -> Any:
    """``build_run(spec, env, purpose="eval")`` of a finished run's spec, its backbone without its start weights
    (:func:`rebuilt_backbone`): the data, model and metrics that evaluate and export run the checkpoint through."""
    import attrs

    from plugtrain.core.runtime import build

    return build.build_run(attrs.evolve(spec, backbone=rebuilt_backbone(spec)), env, purpose="eval")


def checkpoint_path(root: Path, which: str | os.PathLike[str] | None, weights: str | None = None) -> Path:
    """``best`` / ``last`` -> ``RUN_DIR/checkpoints/<which>.pt`` (which must exist); anything else is a path.

    ``None`` is ``best``, or ``last`` for the SWA average (its batch-norm statistics are recomputed at the end of
    training and saved in ``last.pt`` only)."""
    if which is None:
        which = "last" if weights == "swa" else "best"
    if which in ("best", "last"):
        path = root / rundir.CHECKPOINTS / f"{which}.pt"
        if not path.is_file():
            have = sorted(p.name for p in (root / rundir.CHECKPOINTS).glob("*.pt"))
            raise PlugtrainError(f"{path}: no such checkpoint" + (f" (there are: {', '.join(have)})" if have else ""))
        return path
    return Path(which)


def local_env(spec: Any, device: str | None = None) -> distributed.DistEnv:
    """One process on the spec's device, or on ``device`` (never a process group)."""
    return distributed.DistEnv(device=distributed._pick_device(device or spec.trainer.device, 0))


def check_weights(weights: str | None) -> None:
    if weights is not None and weights not in WEIGHTS:
        raise PlugtrainError(f"--weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")


def default_weights(state: dict[str, Any]) -> str:
    """What ``best.pt`` was chosen by: the EMA when the run's best metric was a ``val_ema/`` one, else the model."""
    best_metric = str((state.get("meta") or {}).get("best_metric") or "")
    return "ema" if best_metric.startswith("val_ema/") else "model"


def load_weights(model: Any, state: dict[str, Any], weights: str, path: Path, spec: Any) -> None:
    """Load ``weights`` of the checkpoint ``state`` (read from ``path``) into ``model``, the backbone of ``spec``.

    The EMA state is restored into an EMA of the ``ema`` role (timm's ``ModelEmaV3`` by default) built over the
    backbone, whose ``.module`` then gives the weights; the SWA state is torch's ``AveragedModel``'s (``module.<name>``
    and ``n_averaged``) and loads with that prefix stripped. A checkpoint without the chosen average, an SWA average
    of no epoch, or, for a model with batch norm, an SWA average whose statistics were not recomputed (any checkpoint
    but the ``last.pt`` of a finished run) is bad input."""
    check_weights(weights)
    if weights == "model":
        saved = state.get("model")
        if not isinstance(saved, dict):
            raise PlugtrainError(f"{path}: holds no model weights")
    else:
        averaged = state.get(weights)
        if not averaged:
            raise PlugtrainError(f"{path}: holds no {_LABEL[weights]} (the run did not set trainer.{weights} = "
                                 f"true); choose --weights model")
        if weights == "swa" and "n_averaged" in averaged and int(averaged["n_averaged"]) == 0:
            raise PlugtrainError(f"{path}: its SWA average holds no epoch yet (saved before trainer.swa_start_epoch)")
    try:
        if weights == "ema":
            from plugtrain.core.runtime.build import build_ema

            ema = build_ema(model, spec.trainer.ema_decay)
            ema.load_state_dict(averaged)
            saved = ema.module.state_dict()
        elif weights == "swa":
            saved = {k.removeprefix("module."): v for k, v in averaged.items() if k.startswith("module.")}
        model.load_state_dict(saved)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise PlugtrainError(f"{path}: its {_LABEL[weights]} do not fit the model of {spec.source or 'the spec'}: "
                             f"{first_line(exc)}") from None
    if weights == "swa" and _has_batch_norm(model) and not _swa_finished(state):
        raise PlugtrainError(f"{path}: its SWA average has no batch-norm statistics of its own yet (they are "
                             "recomputed at the end of training and saved in last.pt); use --checkpoint last of a "
                             "finished run")


def _has_batch_norm(model: Any) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _swa_finished(state: dict[str, Any]) -> bool:
    """Whether the checkpoint was saved after the end-of-training SWA evaluation (its batch-norm statistics
    recomputed): the trainer adds ``val_swa/*`` to the last epoch's metrics and then saves ``last.pt`` again."""
    history = state.get("history") or []
    return bool(history) and any(str(k).startswith("val_swa/") for k in history[-1])


def image_reader(spec: Any, in_chans: int) -> Callable[[str | os.PathLike[str]], Any]:
    """``read(path) -> HxWxC uint8 array``: the run's dataset's ``read_image`` (or the built-in decoder)."""
    from plugtrain.core.registry import get_registry

    factory = get_registry().get("datasets", spec.data.dataset.name).factory
    read = getattr(factory, "read_image", None)
    params = dict(spec.data.dataset.params)
    if callable(read):
        return lambda path: read(path, in_chans=in_chans, params=params)
    from plugtrain.plugins.datasets.decode import read_image_file

    return lambda path: read_image_file(path, in_chans)


class Predictor:
    """Images -> the model's outputs, with validation's preprocessing; subclasses give :meth:`forward_raw`.

    ``images`` are paths (read as the dataset reads its files) or arrays (``HxWxC`` / ``HxW`` uint8, a sample as the
    dataset yields it, before the validation pipeline)."""

    def __init__(self, spec: Any, *, class_names: Sequence[str], task: str, in_chans: int, source: str,
                 checkpoint: str | None, weights: str, epoch: int | None) -> None:
        from plugtrain.core.runtime import build

        self.spec, self.task, self.in_chans = spec, task, int(in_chans)
        self.class_names = list(class_names)
        self.source, self.checkpoint, self.weights, self.epoch = source, checkpoint, weights, epoch
        self._read = image_reader(spec, self.in_chans)
        self._pipeline = build.build_transform(spec, "val", self.in_chans)
        self.batch_size = int(spec.data.val_batch_size or spec.data.batch_size)

    # -- preprocessing ---------------------------------------------------------------------------------------------
    def read(self, path: str | os.PathLike[str]) -> Any:
        """One image file as the run's dataset reads its own (``HxWxC`` uint8)."""
        return self._read(path)

    @staticmethod
    def as_list(images: Any) -> list[Any]:
        """``images`` as a list of images: one path (``str`` / ``PathLike``) or one ``HxW`` / ``HxWxC`` array is one
        image, not the characters of its name or the rows of its pixels; any other iterable is a sequence of them."""
        import numpy as np

        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            return [images]
        if isinstance(images, (bytes, bytearray)) or not hasattr(images, "__iter__"):
            raise PlugtrainError(f"images are a path, an HxW(xC) uint8 array, or a list of them; not "
                                 f"{type(images).__name__}")
        return list(images)

    def samples(self, images: Any) -> list[Any]:
        """Paths read, arrays taken as they are (``HxW`` gets a channel axis)."""
        import numpy as np

        out = []
        for item in self.as_list(images):
            if isinstance(item, (str, os.PathLike)):
                out.append(self.read(item))
                continue
            array = np.asarray(item)
            if array.dtype != np.uint8 or array.ndim not in (2, 3):
                raise PlugtrainError(f"an image array must be HxW or HxWxC uint8 (as the dataset yields samples), "
                                     f"not {array.dtype} of shape {array.shape}")
            out.append(array)
        return out

    def raw_batch(self, samples: Sequence[Any]) -> Any:
        """Samples through the validation pipeline and the collate: the raw ``NCHW`` batch (pixel values)."""
        from plugtrain.core.runtime.loader import AugmentedDataset, Collate
        from plugtrain.core.runtime.step import batch_images

        data = AugmentedDataset([(s, 0) for s in samples], self._pipeline, self.spec.run.seed, "predict",
                                to_tensor=self.spec.augmentations.normalize)
        return batch_images(Collate("raise")([data[(0, i)] for i in range(len(data))]), "predict")

    def forward_raw(self, raw: Any) -> Any:
        """The outputs (``N x K`` float32, on the CPU) for a raw batch."""
        raise NotImplementedError

    def transform(self, image: Any) -> Any:
        """One image (a path or an array) -> the ``CHW`` tensor the model takes, exactly as :meth:`predict` makes it."""
        return self.raw_batch(self.samples([image]))[0]

    # -- prediction ------------------------------------------------------------------------------------------------
    def outputs(self, images: Any) -> Any:
        """The model's outputs for ``images`` (a path or array, or a list of them: logits, values or embeddings),
        ``N x K`` float32 on the CPU."""
        import torch

        samples = self.samples(images)
        if not samples:
            return torch.zeros((0, max(len(self.class_names), 1)))
        chunks = [samples[i:i + self.batch_size] for i in range(0, len(samples), self.batch_size)]
        return torch.cat([self.forward_raw(self.raw_batch(c)) for c in chunks])

    def predict(self, images: Any, top_k: int = 5) -> list[dict[str, Any]]:
        """One result per image, a list also for one path or array: ``{"image", "class", "index", "probability",
        "top_k": [{class, index, probability}, ...]}`` for classification (softmax of the logits), ``{"image",
        "prediction"}`` for regression. ``image`` is the path, or the position of an array."""
        if top_k < 1:
            raise PlugtrainError(f"--top-k must be >= 1, got {top_k}")
        if self.task == "metric_learning":
            raise PlugtrainError("predict gives class probabilities; a metric-learning run has none (use evaluate)")
        images = self.as_list(images)
        outputs = self.outputs(images)
        results = []
        for i, (item, out) in enumerate(zip(images, outputs, strict=True)):
            name = str(item) if isinstance(item, (str, os.PathLike)) else i
            if self.task == "regression":
                values = out.tolist()
                results.append({"image": name, "prediction": values[0] if len(values) == 1 else values})
                continue
            probs = out.softmax(-1)
            p, idx = probs.topk(min(top_k, probs.numel()))
            top = [{"class": self.class_names[j] if j < len(self.class_names) else str(j), "index": int(j),
                    "probability": float(q)} for q, j in zip(p.tolist(), idx.tolist(), strict=True)]
            results.append({"image": name, **top[0], "top_k": top})
        return results

    def describe(self) -> str:
        """``runs/x: best.pt (epoch 3), EMA weights`` — what predicts."""
        where = f"{self.checkpoint} (epoch {self.epoch})" if self.checkpoint else "exported model"
        return f"{self.source}: {where}, {_LABEL[self.weights]}"


class LoadedRun(Predictor):
    """A finished run's checkpoint, ready to predict: ``.model`` (the backbone with the chosen weights, eval mode,
    on ``.device``), ``.transform(image)``, ``.predict(images)``, ``.class_names``, ``.task``, ``.weights``
    (``model`` / ``ema`` / ``swa``), ``.checkpoint`` (its path), ``.epoch``, ``.spec``."""

    def __init__(self, run_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
                 weights: str | None = None, *, device: str | None = None) -> None:
        import torch

        from plugtrain.core.runtime import build
        from plugtrain.core.runtime import checkpoint as ckpt
        from plugtrain.core.runtime.step import ModelInput

        check_weights(weights)
        root, spec = open_run(run_dir)
        path = checkpoint_path(root, checkpoint, weights)
        state = ckpt.load(path)
        chosen = weights or default_weights(state)
        meta = state.get("meta") or {}
        task = meta.get("task", spec.run.task)
        class_names = list(meta.get("class_names") or [])
        in_chans = int(meta.get("in_chans", 3))
        super().__init__(spec, class_names=class_names, task=task, in_chans=in_chans, source=str(root),
                         checkpoint=str(path), weights=chosen, epoch=state.get("epoch"))
        num_classes = int(meta.get("num_classes", len(class_names)))
        self.device = local_env(spec, device).device
        torch.manual_seed(spec.run.seed)
        model = build.component("backbones", rebuilt_backbone(spec), "backbone",
                                num_classes=0 if task == "metric_learning" else num_classes)
        load_weights(model, state, chosen, path, spec)
        self.model = model.to(self.device).eval()
        self.model_input = ModelInput.for_spec(spec, in_chans, self.device)

    def autocast(self) -> Any:
        from plugtrain.core.runtime.precision import autocast

        return autocast(self.device.type, self.spec.trainer.precision)

    def forward_raw(self, raw: Any) -> Any:
        import torch

        with torch.no_grad(), self.autocast():
            out = self.model(self.model_input(raw))
        return (out[0] if isinstance(out, (tuple, list)) else out).float().cpu()

    def transform(self, image: Any) -> Any:
        """One image (a path or an array) -> the normalised ``CHW`` float32 tensor the model takes (on ``.device``),
        exactly as :meth:`predict` makes it."""
        return self.model_input(super().transform(image)[None])[0]
