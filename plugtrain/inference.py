"""Inference on a finished run: :class:`LoadedRun` (a run directory's checkpoint) and :class:`ExportedModel` (an
``.onnx`` / ``.pt2`` file ``plugtrain export`` wrote, with its sidecar), both :class:`Predictor` s, and
:func:`open_model`, which opens either. ``plugtrain.load_run``, ``plugtrain predict``, ``plugtrain evaluate`` and
``plugtrain export`` are built on this module; it imports nothing of :mod:`plugtrain.commands`.

Preprocessing is validation's, step for step: a file is read by the run's dataset's own ``read_image`` (same decoder,
channels and size handling as its samples; the built-in ``imagefolder``'s, looked up in the registry, for a dataset
without one), then the run's validation pipeline (``build_transform(spec, "val")``), the collate, and
:class:`~plugtrain.core.runtime.step.ModelInput`'s normalisation, under the run's precision (as ``evaluate``). An
exported graph normalises inside; its sidecar (``<file>.json``) is checked against its schema (:func:`read_sidecar`)
and the file against the sidecar.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plugtrain.core.console import quiet_logger
from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.core.runtime import distributed, rundir
from plugtrain.core.spec import load_spec

__all__ = ["FORMATS", "LOADABLE", "WEIGHTS", "ExportedModel", "LoadedRun", "Predictor", "open_model",
           "read_sidecar", "sidecar_path", "sidecar_problems", "TTA_VIEWS"]

#: What ``--weights`` chooses: the trained model, its EMA (``trainer.ema``), its SWA average (``trainer.swa``).
WEIGHTS: tuple[str, ...] = ("model", "ema", "swa")
_LABEL = {"model": "model weights", "ema": "EMA weights", "swa": "SWA weights"}

FORMATS: tuple[str, ...] = ("onnx", "pt2", "safetensors")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}
#: Exported files that ``predict`` / ``load_run`` run (safetensors holds weights only).
LOADABLE: tuple[str, ...] = (".onnx", ".pt2")
SIDECAR_FORMAT = "plugtrain-export"
#: 2 added ``preprocessing`` (the validation pipeline's steps); version 1 sidecars are still read.
SIDECAR_VERSION = 2
#: What each format needs beyond plugtrain's own dependencies.
NEEDS = {"onnx": ("onnx", "onnxruntime", "onnxscript"), "pt2": (), "safetensors": ("safetensors",)}
INPUT_NAME = "images"


#: ``--tta`` view sets: the flips (of ``NCHW`` axes) each view applies to the image; ``()`` is the image itself. The
#: task's ``tta_merge`` merges the model's outputs of the views (mean probabilities, values or embeddings).
TTA_VIEWS: dict[str, tuple[tuple[int, ...], ...]] = {"flip": ((), (-1,)), "flips4": ((), (-1,), (-2,), (-2, -1))}


def tta_merger(task_object: Any, task: str, views: str) -> Callable[[list[Any]], Any]:
    """The task's ``tta_merge`` for the view set ``views``; an unknown view set, or a task without ``tta_merge``
    (its outputs do not simply average: a mask would need flipping back), is bad input."""
    if views not in TTA_VIEWS:
        raise PlugtrainError(f"--tta must be one of {', '.join(TTA_VIEWS)}, not {views!r}")
    merge = getattr(task_object, "tta_merge", None)
    if not callable(merge):
        raise PlugtrainError(f"--tta: task '{task}' does not merge test-time augmented outputs (it has no tta_merge); "
                             "leave --tta out")
    return merge


def tta_forward(forward: Callable[[Any], Any], images: Any, merge: Callable[[list[Any]], Any], views: str) -> Any:
    """``forward`` of each view of the ``NCHW`` batch ``images`` (the identity, flips), merged by ``merge``."""
    return merge([forward(images.flip(dims) if dims else images) for dims in TTA_VIEWS[views]])


def tta_module(model: Any, merge: Callable[[list[Any]], Any], views: str) -> Any:
    """``model`` as a module whose output is its outputs of the views merged (what ``evaluate --tta`` scores)."""
    import torch

    class TTA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: Any) -> Any:
            def one(x: Any) -> Any:
                out = self.model(x)
                return out[0] if isinstance(out, (tuple, list)) else out

            return tta_forward(one, images, merge, views)

    return TTA()


def open_model(source: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None,
               weights: str | None = None, device: str | None = None) -> Predictor:
    """A run directory -> :class:`LoadedRun` (on ``device``, default the spec's); an exported ``.onnx`` / ``.pt2``
    file -> :class:`ExportedModel` (on the CPU; ``checkpoint`` and ``weights`` are fixed by the export). Any other
    file is bad input that says what the file is and what to give instead (a safetensors export holds weights only;
    a checkpoint goes with its run directory and ``--checkpoint``)."""
    source = os.fspath(source)
    path = Path(source)
    if path.suffix in LOADABLE and not path.exists():
        raise PlugtrainError(f"{source}: no such file (predict takes a run directory, or an exported "
                             f"{' / '.join(LOADABLE)} model with its sidecar)")
    if path.suffix in LOADABLE and path.is_file():
        if checkpoint is not None or weights is not None:
            raise PlugtrainError(f"{source}: an exported model has its weights built in; --checkpoint and --weights "
                                 "apply to run directories")
        return ExportedModel(source)
    return LoadedRun(source, None if checkpoint is None else os.fspath(checkpoint), weights, device=device)


GLOB_CHARS = "*?["


def is_batch_path(path: str | os.PathLike[str]) -> bool:
    """A folder or a glob pattern (not an existing file): many images, predicted as a batch."""
    text = os.fspath(path)
    return Path(text).is_dir() or (any(c in text for c in GLOB_CHARS) and not Path(text).is_file())


def expand_images(paths: Sequence[str | os.PathLike[str]], extensions: Sequence[str]) -> list[str]:
    """Each path as image files, in order: a folder -> its image files (recursive, sorted, hidden ones left out), a
    glob (``**`` recursive) -> its matching image files, sorted; a file -> itself. A path that names nothing, or a
    folder or glob without an image file of ``extensions``, is bad input saying so."""
    import glob

    from plugtrain.core.files import is_image_file, iter_image_files

    out: list[str] = []
    for path in map(os.fspath, paths):
        if Path(path).is_file():
            out.append(path)
            continue
        if Path(path).is_dir():
            found = list(iter_image_files(path, extensions))
        elif any(c in path for c in GLOB_CHARS):
            found = sorted(p for p in glob.glob(path, recursive=True) if Path(p).is_file() and is_image_file(p,
                                                                                                           extensions))
        else:
            raise PlugtrainError(f"{path}: no such file or folder")
        if not found:
            raise PlugtrainError(f"{path}: no image files ({' '.join(extensions)}) in it")
        out.extend(found)
    return out


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
    """``read(path) -> HxWxC array`` (uint8; with ``pixels = "raw"`` the stored dtype): the run's dataset's
    ``read_image`` (or the built-in ``imagefolder``'s, for a dataset without one)."""
    from plugtrain.core.registry import get_registry

    factory = get_registry().get("datasets", spec.data.dataset.name).factory
    read = getattr(factory, "read_image", None)
    params = dict(spec.data.dataset.params)
    if callable(read):
        return lambda path: read(path, in_chans=in_chans, params=params)
    # a dataset without its own reader: files read as the built-in folder dataset reads them (its defaults)
    default = get_registry().get("datasets", "imagefolder").factory.read_image
    return lambda path: default(path, in_chans=in_chans, params={})


class Predictor:
    """Images -> the model's outputs, with validation's preprocessing; subclasses give :meth:`forward_raw`.

    ``images`` are paths (read as the dataset reads its files) or arrays (``HxWxC`` / ``HxW``, a sample as the
    dataset yields it, before the validation pipeline: uint8, or with ``pixels = "raw"`` the stored dtype)."""

    def __init__(self, spec: Any, *, class_names: Sequence[str], task: str, in_chans: int, source: str,
                 checkpoint: str | None, weights: str, epoch: int | None) -> None:
        from plugtrain.core.runtime import build
        from plugtrain.core.task import get_task

        self.spec, self.task, self.in_chans = spec, task, int(in_chans)
        self.task_object = get_task(task, getattr(spec, "task", None))
        self.class_names = list(class_names)
        self.source, self.checkpoint, self.weights, self.epoch = source, checkpoint, weights, epoch
        self._read = image_reader(spec, self.in_chans)
        #: The dtypes an image array may have: the dataset's samples are uint8, or with ``pixels = "raw"`` kept as
        #: stored (uint16, float32; :class:`ExportedModel` narrows this to its sidecar's ``pixel_dtype``).
        raw = spec.data.dataset.params.get("pixels") == "raw"
        self.pixel_dtypes: tuple[str, ...] = ("uint8", "uint16", "float32") if raw else ("uint8",)
        self._pipeline = build.build_transform(spec, "val", self.in_chans)
        self._tta: tuple[Callable[[list[Any]], Any], str] | None = None  # use_tta()
        self.batch_size = int(spec.data.val_batch_size or spec.data.batch_size)

    # -- preprocessing ---------------------------------------------------------------------------------------------
    def read(self, path: str | os.PathLike[str]) -> Any:
        """One image file as the run's dataset reads its own (``HxWxC``; uint8, or with ``pixels = "raw"`` as stored)."""
        return self._read(path)

    @staticmethod
    def as_list(images: Any) -> list[Any]:
        """``images`` as a list of images: one path (``str`` / ``PathLike``) or one ``HxW`` / ``HxWxC`` array is one
        image, not the characters of its name or the rows of its pixels; any other iterable is a sequence of them."""
        import numpy as np

        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            return [images]
        if isinstance(images, (bytes, bytearray)) or not hasattr(images, "__iter__"):
            raise PlugtrainError(f"images are a path, an HxW(xC) array, or a list of them; not "
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
            if array.dtype.name not in self.pixel_dtypes or array.ndim not in (2, 3):
                raise PlugtrainError(f"an image array must be HxW or HxWxC {' or '.join(self.pixel_dtypes)} (as the "
                                     f"dataset yields samples), not {array.dtype} of shape {array.shape}")
            out.append(array)
        return out

    def raw_batch(self, samples: Sequence[Any]) -> Any:
        """Samples through the validation pipeline and the collate: the raw ``NCHW`` batch (pixel values)."""
        from plugtrain.core.runtime import build
        from plugtrain.core.runtime.loader import AugmentedDataset, Collate
        from plugtrain.core.runtime.step import batch_images

        data = AugmentedDataset([(s, 0) for s in samples], self._pipeline, self.spec.run.seed, "predict",
                                to_tensor=self.spec.augmentations.normalize, spatial_dims=build.sample_rank(self.spec))
        return batch_images(Collate("raise")([data[(0, i)] for i in range(len(data))]), "predict")

    def forward_raw(self, raw: Any) -> Any:
        """The outputs (``N x K`` float32, on the CPU) for a raw batch."""
        raise NotImplementedError

    def use_tta(self, views: str | None) -> None:
        """Predict with test-time augmentation: each image's outputs of the views of ``views`` (``TTA_VIEWS``)
        merged by the task (``None``: the image alone)."""
        self._tta = None if views is None else (tta_merger(self.task_object, self.task, views), views)

    def forward(self, raw: Any) -> Any:
        """:meth:`forward_raw`, or with :meth:`use_tta` its outputs of the views merged."""
        return self.forward_raw(raw) if self._tta is None else tta_forward(self.forward_raw, raw, *self._tta)

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
        return torch.cat([self.forward(self.raw_batch(c)) for c in chunks])

    def predict(self, images: Any, top_k: int = 5, out_dir: str | os.PathLike[str] | None = None
                ) -> list[dict[str, Any]]:
        """One result per image, a list also for one path or array: ``{"image", ...}`` with what the run's task
        makes of the image's output (:meth:`plugtrain.core.hookspecs.Task.predict`: the top-k classes and their
        probabilities, the predicted values, ...). ``image`` is the path, or the position of an array. With
        ``out_dir``, a task that writes files of its predictions (``Task.save_prediction``: a mask PNG) writes them
        there."""
        if top_k < 1:
            raise PlugtrainError(f"--top-k must be >= 1, got {top_k}")
        task = self.task_object
        images = self.as_list(images)
        outputs = self.outputs(images)
        results = []
        for i, (item, out) in enumerate(zip(images, outputs, strict=True)):
            name = str(item) if isinstance(item, (str, os.PathLike)) else i
            result = {"image": name, **task.predict(out, self.class_names, top_k)}
            save = getattr(task, "save_prediction", None)
            if out_dir is not None and callable(save):
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                result = save(result, str(name), Path(out_dir))
            results.append(result)
        return results

    # -- batch prediction (folders, globs: plugtrain predict RUN PATH... --out FILE) ---------------------------------
    def extensions(self) -> tuple[str, ...]:
        """The file extensions a folder or glob of images is read for: those the run's dataset reads (``.npy`` too
        with ``pixels = "raw"``), or those its factory lists in ``read_extensions`` (a dataset of other files)."""
        from plugtrain.core.files import IMAGE_EXTENSIONS, RAW_EXTENSIONS
        from plugtrain.core.registry import get_registry

        own = getattr(get_registry().get("datasets", self.spec.data.dataset.name).factory, "read_extensions", None)
        if own:
            return tuple(own)
        return RAW_EXTENSIONS if self.spec.data.dataset.params.get("pixels") == "raw" else IMAGE_EXTENSIONS

    def stream(self, paths: Sequence[str], *, batch_size: int | None = None, num_workers: int | None = None,
               on_error: str = "skip") -> Any:
        """Yield ``(paths, outputs, unreadable)`` per batch of ``paths``: read and transformed in a DataLoader (the
        run's ``data.num_workers`` and batch size unless given), the outputs ``N x K`` on the CPU for the readable
        files, exactly as :meth:`outputs` gives them one by one. An unreadable file is ``(path, reason)`` in
        ``unreadable`` (``on_error = "skip"``), or bad input naming it (``"raise"``)."""
        import torch

        if on_error not in ("raise", "skip"):
            raise PlugtrainError(f"--on-error must be raise or skip, not {on_error!r}")
        batch_size = self.batch_size if batch_size is None else batch_size
        num_workers = int(self.spec.data.num_workers) if num_workers is None else num_workers
        if batch_size < 1 or num_workers < 0:
            raise PlugtrainError(f"--batch-size must be >= 1 and --num-workers >= 0, not {batch_size} and "
                                 f"{num_workers}")
        paths = [str(p) for p in paths]
        data = _FileSamples(paths, self._read, self._pipeline, self.spec)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=min(num_workers, len(paths)),
                                             collate_fn=_collate_files, shuffle=False)
        for batch in loader:
            if batch["unreadable"] and on_error == "raise":
                path, reason = batch["unreadable"][0]
                raise PlugtrainError(f"{path}: unreadable: {reason} (--on-error skip predicts the other files and "
                                     "lists the unreadable ones)")
            good = [paths[i] for i in batch["index"]]
            outputs = self.forward(batch["images"]) if good else torch.zeros((0, 0))
            yield good, outputs, batch["unreadable"]

    def describe(self) -> str:
        """``runs/x: best.pt (epoch 3), EMA weights`` — what predicts."""
        where = f"{self.checkpoint} (epoch {self.epoch})" if self.checkpoint else "exported model"
        return f"{self.source}: {where}, {_LABEL[self.weights]}"


class _FileSamples:
    """Image files as validation samples, for a DataLoader: ``(index, CHW image)``, or ``(index, path, reason)``
    for a file that cannot be read (reported per file, never fatal here)."""

    def __init__(self, paths: list[str], read: Callable[[str], Any], pipeline: Any, spec: Any) -> None:
        from plugtrain.core.runtime.build import sample_rank
        from plugtrain.core.runtime.loader import AugmentedDataset

        self.paths, self.read = paths, read
        self.augmented = AugmentedDataset([], pipeline, spec.run.seed, "predict",
                                          to_tensor=spec.augmentations.normalize, spatial_dims=sample_rank(spec))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        import numpy as np

        try:
            image = np.asarray(self.read(self.paths[index]))
        except Exception as exc:  # noqa: BLE001 - any reader fault: this file is unreadable, the others go on
            reason = " ".join(str(exc).split())
            return index, self.paths[index], reason.removeprefix(f"{self.paths[index]}: ") or type(exc).__name__
        image = image[..., None] if image.ndim == self.augmented.spatial_dims else image
        return index, self.augmented._augment(image, 0, 0, 0, 0)[0]


def _collate_files(items: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The readable samples stacked as :meth:`Predictor.raw_batch` stacks them, their indices, the unreadable files."""
    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.runtime.step import batch_images

    good = [item for item in items if len(item) == 2]
    images = batch_images(Collate("raise")([(im, 0) for _, im in good]), "predict") if good else None
    return {"index": [i for i, _ in good], "images": images,
            "unreadable": [(path, reason) for _, path, reason in (item for item in items if len(item) == 3)]}


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
                                num_classes=self.task_object.backbone_classes(num_classes))
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


def require(fmt: str, modules: tuple[str, ...] | None = None) -> None:
    """One error (exit 2) naming what ``fmt`` needs and is not installed."""
    missing = [m for m in (NEEDS[fmt] if modules is None else modules) if importlib.util.find_spec(m) is None]
    if missing:
        raise PlugtrainError(f"--format {fmt} needs {', '.join(missing)}, not installed here: "
                             "pip install 'plugtrain[export]'")


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def onnx_data(path: Path) -> Path:
    """Where an ONNX file over protobuf's 2 GB keeps its weights (``model.onnx.data``)."""
    return path.with_name(path.name + ".data")


def read_sidecar(model: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of ``model`` (``<model>.json``), checked against its schema (:func:`sidecar_problems`); a missing,
    unreadable or non-JSON file, or one that does not fit the schema, is bad input naming it and what is wrong."""
    model = Path(model)
    side = sidecar_path(model)
    try:
        text = side.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlugtrainError(f"{model}: no sidecar {side.name} beside it (plugtrain export writes one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlugtrainError(f"{side}: not readable: {first_line(exc)}") from None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        where = f":{exc.lineno}:{exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise PlugtrainError(f"{side}{where}: not JSON: {getattr(exc, 'msg', first_line(exc))}") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise PlugtrainError(f"{side}: not a plugtrain export sidecar (a JSON object with \"format\": "
                             f"\"{SIDECAR_FORMAT}\"), but {_short(meta)}")
    problems = sidecar_problems(meta, model.suffix)
    if problems:
        raise PlugtrainError(f"{side}: " + "; ".join(problems) + " (was it edited? export again)")
    return meta


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, dict) else "an object without that"
    return text if len(text) <= 40 else text[:37] + "..."


def sidecar_problems(meta: dict[str, Any], suffix: str | None = None) -> list[str]:
    """What in a sidecar does not fit its schema (the keys predict and a deployer read, their types and how they
    agree with each other and with the model file's ``suffix``); empty when it fits."""
    from plugtrain.core.runtime.checkpoint import _known_task

    problems: list[str] = []

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def check(table: dict[str, Any], key: str, ok: Any, what: str, prefix: str = "") -> Any:
        if key not in table:
            problems.append(f"missing key '{prefix}{key}'")
            return None
        if not ok(table[key]):
            problems.append(f"{prefix}{key} must be {what}, not {_short(table[key])}")
            return None
        return table[key]

    version = check(meta, "format_version", is_int, "an integer")
    if version is not None and not 1 <= version <= SIDECAR_VERSION:
        problems.append(f"format_version {version}: this plugtrain reads versions 1 to {SIDECAR_VERSION}"
                        + (" (written by a newer plugtrain?)" if version > SIDECAR_VERSION else ""))
    fmt = check(meta, "export_format", lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}")
    if fmt is not None and suffix is not None and SUFFIX[fmt] != suffix:
        problems.append(f"export_format is {fmt!r} but the model file is a {suffix or 'suffix-less'} file")
    check(meta, "file", lambda v: isinstance(v, str), "a file name")
    check(meta, "data_file", lambda v: v is None or isinstance(v, str), "a file name or null")
    check(meta, "task", _known_task, "a registered task (see `plugtrain list tasks`)")
    names = check(meta, "class_names", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
                  "a list of strings")
    count = check(meta, "num_classes", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    if names is not None and count is not None and len(names) not in (0, count):
        problems.append(f"class_names has {len(names)} names but num_classes is {count}")
    channels = None
    inp = check(meta, "input", lambda v: isinstance(v, dict), "an object")
    if inp is not None:
        dims = [check(inp, k, lambda v: is_int(v) and v > 0, "an integer > 0", "input.")
                for k in ("channels", "height", "width")]
        channels = dims[0]
        shape = check(inp, "shape", lambda v: isinstance(v, list) and len(v) == 4, "a list of 4 (NCHW)", "input.")
        if shape is not None and None not in dims and shape[1:] != dims:
            problems.append(f"input.shape {json.dumps(shape)} does not agree with input.channels / height / width "
                            f"{dims[0]} / {dims[1]} / {dims[2]}")
        check(inp, "layout", lambda v: v == "NCHW", '"NCHW"', "input.")
        check(inp, "dtype", lambda v: v == "float32", '"float32"', "input.")
        check(inp, "name", lambda v: v is None or isinstance(v, str), "a string or null", "input.")
    out = check(meta, "output", lambda v: isinstance(v, dict), "an object")
    if out is not None:
        check(out, "name", lambda v: v is None or isinstance(v, str), "a string or null", "output.")
        check(out, "shape", lambda v: isinstance(v, list) and len(v) == 2, "a list of 2 (batch, values)", "output.")
    norm = check(meta, "normalization", lambda v: isinstance(v, dict), "an object")
    if norm is not None:
        check(norm, "included", lambda v: isinstance(v, bool), "true or false", "normalization.")
        def per_channel(v: Any) -> bool:
            return v is None or (isinstance(v, list) and all(is_number(x) for x in v)
                                 and len(v) in (1, channels or len(v)))

        for key in ("mean", "std"):
            value = check(norm, key, per_channel, f"null or a list of 1 or {channels or 'channels'} numbers",
                          "normalization.")
            if key == "std" and value and any(x <= 0 for x in value):
                problems.append("normalization.std values must be > 0")
    check(meta, "weights", lambda v: v in WEIGHTS, f"one of {', '.join(WEIGHTS)}")
    check(meta, "checkpoint", lambda v: v is None or isinstance(v, str), "a path or null")
    check(meta, "epoch", lambda v: v is None or is_int(v), "an integer or null")
    check(meta, "spec", lambda v: isinstance(v, dict), "an object (the run's resolved spec)")
    if version is not None and version >= 2:
        pre = check(meta, "preprocessing", lambda v: isinstance(v, dict), "an object")
        if pre is not None:
            check(pre, "steps", lambda v: isinstance(v, list) and all(isinstance(s, dict) and isinstance(
                s.get("name"), str) for s in v), "a list of objects with a name", "preprocessing.")
    for key in ("metrics", "parity", "versions", "components"):
        if key in meta and not isinstance(meta[key], dict):
            problems.append(f"{key} must be an object, not {_short(meta[key])}")
    return problems


def sidecar_spec(side: Path, data: dict[str, Any]) -> Any:
    """The sidecar's resolved spec, loaded and checked as any spec (its problems located as ``SIDECAR spec``)."""
    import re
    import tempfile

    from plugtrain.core.spec import SpecError
    from plugtrain.core.spec.loader import dumps_dict

    with tempfile.TemporaryDirectory(prefix="plugtrain-sidecar-") as tmp:
        path = Path(tmp) / "spec.toml"
        try:
            path.write_text(dumps_dict(data), encoding="utf-8")
            with rundir.without_start_inputs():
                return load_spec(path)
        except SpecError as exc:
            where = re.compile(re.escape(str(path)) + r"(?::\d+:\d+)?:?\s*")
            first = where.sub("", exc.problems[0]) if exc.problems else str(exc)
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            raise PlugtrainError(f"{side}: its spec does not load: {first}{more}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise PlugtrainError(f"{side}: its spec does not load: {type(exc).__name__}: {first_line(exc)}") from None


def onnx_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load_model(path: Path) -> tuple[Any, tuple[int, ...] | None, int | None]:
    """``(model, (C, H, W) it takes, values per image it gives)`` of an ``.onnx`` / ``.pt2`` file (``None`` where
    the file does not fix it); a file the runtime cannot load is bad input."""
    import torch

    kind = "ONNX model" if path.suffix == ".onnx" else "torch.export (.pt2) program"
    try:
        if path.suffix == ".onnx":
            session = onnx_session(path)
            shapes = [i.shape for i in session.get_inputs()], [o.shape for o in session.get_outputs()]
            model: Any = session
        else:
            with quiet_logger("torch.export"):  # it logs the traceback of its first try at a file it cannot read
                program = torch.export.load(str(path))
            inputs = set(program.graph_signature.user_inputs)
            nodes = list(program.graph.nodes)
            shapes = ([list(n.meta["val"].shape) for n in nodes if n.op == "placeholder" and n.name in inputs],
                      [list(a.meta["val"].shape) for n in nodes if n.op == "output" for a in n.args[0]
                       if hasattr(a, "meta") and "val" in a.meta])
            model = program.module()
    except Exception as exc:  # noqa: BLE001 - whatever the runtime raises for a file it cannot read: one line
        size = path.stat().st_size if path.is_file() else 0
        raise PlugtrainError(f"{path}: not a readable {kind} (truncated or corrupt? {size} bytes): "
                             f"{type(exc).__name__}: {first_line(exc)}") from None
    if len(shapes[0]) != 1 or len(shapes[0][0]) != 4:
        raise PlugtrainError(f"{path}: takes {len(shapes[0])} inputs of shapes {shapes[0]}, not one NCHW batch of "
                             "images: not a model plugtrain export wrote")
    dims = shapes[0][0][1:]
    took = tuple(dims) if all(isinstance(d, int) for d in dims) else None
    gives = shapes[1][0][-1] if len(shapes[1]) == 1 and len(shapes[1][0]) == 2 else None
    return model, took, gives if isinstance(gives, int) else None


class ExportedModel(Predictor):
    """An exported ``.onnx`` (onnxruntime) or ``.pt2`` (``torch.export.load``) file and its sidecar, predicting like
    the run it came from (the sidecar's spec gives the reader and the validation pipeline). ``.model`` is the
    onnxruntime session or the loaded module; :meth:`transform` gives the raw ``float32`` input the graph takes
    (normalisation is inside).

    The sidecar is checked against its schema (:func:`read_sidecar`) and the model file against the sidecar (its
    input and output shapes); a sidecar or model file that is missing, edited, truncated or of another format is
    bad input naming the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        side = sidecar_path(path)
        meta = read_sidecar(path)
        spec = sidecar_spec(side, meta["spec"])
        super().__init__(spec, class_names=meta["class_names"], task=meta["task"],
                         in_chans=meta["input"]["channels"], source=str(path), checkpoint=meta["checkpoint"],
                         weights=meta["weights"], epoch=meta["epoch"])
        self.sidecar = meta
        if meta["input"].get("pixel_dtype") in self.pixel_dtypes:
            self.pixel_dtypes = (meta["input"]["pixel_dtype"],)
        if meta.get("data_file") and not (path.parent / meta["data_file"]).is_file():
            raise PlugtrainError(f"{path}: its weights file {path.parent / meta['data_file']} (the sidecar's "
                                 "data_file) is missing")
        if path.suffix == ".onnx":
            require("onnx", ("onnxruntime",))
        self.model, took, gives = _load_model(path)
        want = (meta["input"]["channels"], meta["input"]["height"], meta["input"]["width"])
        if took is not None and tuple(took) != want:
            raise PlugtrainError(f"{side}: input is {'x'.join(map(str, want))} (channels x height x width) but "
                                 f"{path.name} takes {'x'.join(map(str, took))}")
        size = meta["output"]["shape"][-1]
        if gives is not None and isinstance(size, int) and gives != size:
            raise PlugtrainError(f"{side}: output.shape says {size} values per image but {path.name} gives {gives}")
        n = len(meta["class_names"])
        if (gives is not None and len(meta["output"]["shape"]) == 2 and n and self.task_object.backbone_classes(n) == n
                and n != gives):
            raise PlugtrainError(f"{side}: class_names has {len(meta['class_names'])} names but {path.name} gives "
                                 f"{gives} logits")
        self.input_chw = want
        self._check_pipeline()

    def _check_pipeline(self) -> None:
        """The sidecar spec's validation pipeline must make the images the model takes: probed with one blank image
        of the model's size (a pipeline that cannot take that probe is checked on the first real batch instead)."""
        import numpy as np

        c, h, w = self.input_chw
        try:
            made = tuple(self.raw_batch([np.zeros((h, w, c), np.uint8)]).shape[1:])
        except Exception:  # noqa: BLE001 - e.g. a crop larger than the probe: forward_raw checks real images
            return
        if made != self.input_chw:
            self._mismatch(made)

    def _mismatch(self, made: tuple[int, ...]) -> None:
        raise PlugtrainError(f"{sidecar_path(self.source)}: its spec's validation pipeline makes "
                             f"{'x'.join(map(str, made))} images but {Path(self.source).name} takes "
                             f"{'x'.join(map(str, self.input_chw))} (channels x height x width)")

    def forward_raw(self, raw: Any) -> Any:
        import torch

        x = raw.float()
        if tuple(x.shape[1:]) != self.input_chw:
            self._mismatch(tuple(x.shape[1:]))
        if isinstance(self.model, torch.nn.Module):
            with torch.no_grad():
                return self.model(x).float()
        return torch.from_numpy(self.model.run(None, {INPUT_NAME: x.numpy()})[0]).float()

    def transform(self, image: Any) -> Any:
        return super().transform(image).float()

    def describe(self) -> str:
        return f"{self.source} (exported from {self.checkpoint}, epoch {self.epoch}), {self.weights} weights"
