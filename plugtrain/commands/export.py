"""``plugtrain export RUN_DIR [--checkpoint best|last|PATH] [--format onnx|pt2|safetensors] [--weights model|ema|swa]
[--output PATH] [--tolerance T] [--json] [--overwrite]``: a finished run's model as a file usable outside training.

* ``onnx`` (``torch.onnx.export(dynamo=True)``; needs the ``export`` extra: onnx, onnxruntime, onnxscript) and
  ``pt2`` (``torch.export``): a graph that takes ``float32`` ``NCHW`` pixel values 0..255 (cast ``uint8`` images)
  with a dynamic batch axis, normalises them inside with the run's mean / std, and returns what the backbone
  returns (logits, regression values or embeddings). Usable alone: resize to the sidecar's input size and feed.
* ``safetensors``: the backbone's state dict (no graph, no normalisation: apply the sidecar's mean / std).

The weights are the run's EMA when the checkpoint holds one, else the model (``--weights`` chooses; the output says
which). Next to the file, ``<file>.json`` (the sidecar) records the class names, task, input size and channels, the
normalisation, the weights, checkpoint and epoch, the validation metrics of those weights at that epoch, the
resolved spec, the versions of plugtrain, torch, the exporter and each component's plugin, and ``preprocessing``: the
reader, the validation pipeline's steps as built (each transform's parameters; a resize's OpenCV interpolation) and
the normalisation, so that a deployer reproduces predict's input without plugtrain. An ONNX model over protobuf's 2 GB
limit keeps its weights beside it in ``<file>.data`` (the sidecar's ``data_file``); any other is one file.

An existing output or sidecar is replaced only with ``--overwrite``; the files are written and checked in a
temporary folder beside the output and moved into place once they pass, so a failed export leaves what was there.

Export checks itself: the exported file, loaded back (onnxruntime; ``torch.export.load``; the safetensors loaded
into a freshly built backbone), against the eager model on real validation images of the run (the dataset rebuilt
from the run's spec), at the batch size and at batch 1. The largest absolute difference is printed; above
``--tolerance`` (1e-4) the files are removed and the exit code is 1. ``plugtrain predict`` and
``plugtrain.load_run`` take an exported ``.onnx`` / ``.pt2`` file (with its sidecar) instead of a run directory
(:class:`ExportedModel`); the sidecar is checked against its schema (:func:`read_sidecar`) and the file against it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plugtrain.commands._finished_run import (
    Predictor,
    build_for_eval,
    check_weights,
    checkpoint_path,
    load_weights,
    local_env,
    open_run,
    rebuilt_backbone,
)
from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, first_line

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
OUTPUT_NAME = {"classification": "logits", "regression": "values", "metric_learning": "embeddings"}
CHECK_SAMPLES = 32
#: The metrics.csv prefix of each choice of weights.
PREFIX = {"model": "val/", "ema": "val_ema/", "swa": "val_swa/"}


class ExportFailed(PlugtrainError):
    """The exporter failed, or the exported model does not match the eager one: exit code 1."""

    exit_code = 1


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


#: Above this many bytes of weights an ONNX file keeps them in :func:`onnx_data` (protobuf's limit is 2 GB).
ONNX_INLINE_BYTES = 1_800_000_000


def _normalized_class() -> type:
    import torch

    class Normalized(torch.nn.Module):
        """``float32 NCHW`` pixel values 0..255 -> the backbone's output, normalised inside as
        :class:`~plugtrain.core.runtime.step.ModelInput` does (the same tensors, the same operations)."""

        def __init__(self, backbone: torch.nn.Module, mean: Any, std: Any) -> None:
            super().__init__()
            self.backbone = backbone
            self.normalize = mean is not None
            if self.normalize:
                self.register_buffer("mean", mean.detach().cpu().clone())
                self.register_buffer("std", std.detach().cpu().clone())

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.float()
            if self.normalize:
                x = (x - self.mean) / self.std
            out = self.backbone(x)
            return out[0] if isinstance(out, (tuple, list)) else out

    return Normalized


def run(run_dir: str, *, checkpoint: str | None = None, fmt: str = "onnx", weights: str | None = None,
        output: str | None = None, tolerance: float = 1e-4, as_json: bool = False, overwrite: bool = False) -> int:
    """Export ``weights`` of ``checkpoint`` of ``run_dir`` as ``fmt``, check it, write the sidecar; exit code 0.

    An existing output file or sidecar is replaced only with ``overwrite``. The files are written and checked in a
    temporary folder beside the output and moved into place (``os.replace``) only once they passed, so a failed or
    interrupted export leaves what was there before, and no half-written file."""
    import shutil
    import tempfile

    import torch

    from plugtrain.core.runtime import checkpoint as ckpt
    from plugtrain.core.runtime.step import ModelInput

    if fmt not in FORMATS:
        raise PlugtrainError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if not tolerance >= 0:
        raise PlugtrainError(f"--tolerance must be >= 0, got {tolerance}")
    require(fmt)
    check_weights(weights)
    root, spec = open_run(run_dir)
    path = checkpoint_path(root, checkpoint, weights)
    state = ckpt.load(path)
    chosen = weights or ("ema" if state.get("ema") else "model")
    out = Path(output) if output else root / "export" / f"{path.stem}-{chosen}{SUFFIX[fmt]}"
    _check_output(out, fmt, overwrite)
    env = local_env(spec, "cpu")  # exported on the CPU: a graph without device-specific kernels
    built = build_for_eval(spec, env)
    load_weights(built.backbone, state, chosen, path, spec)
    model_input = ModelInput.for_spec(spec, built.in_chans, env.device)
    wrapper = _normalized_class()(built.backbone, model_input.mean, model_input.std).eval()
    images = _validation_images(built.val_data)
    side = sidecar_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise PlugtrainError(f"{out}: cannot write there: {exc.strerror or first_line(exc)}") from None
    temp = work / out.name  # the final name, so that an ONNX file's external data keeps the name it refers to
    t0 = time.monotonic()
    try:
        with torch.no_grad():
            want = [wrapper(images), wrapper(images[:1])]
        got, checked_with = _EXPORTERS[fmt](wrapper, images, temp, spec, built)
        diff = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
        if not diff <= tolerance:
            kept = "; nothing written" if not overwrite else "; the existing files are left as they were"
            raise ExportFailed(f"{out}: the exported model differs from the eager model by {diff:.3g} (max abs, on "
                               f"{len(images)} validation images), more than --tolerance {tolerance:g}{kept}")
        seconds = time.monotonic() - t0
        record = _sidecar(temp, fmt, root, path, state, chosen, spec, built, images,
                          {"max_abs_diff": diff, "tolerance": tolerance, "samples": int(images.shape[0]),
                           "batch_sizes": [int(images.shape[0]), 1], "checked_with": checked_with,
                           "seconds": round(seconds, 3)})
        sidecar_path(temp).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _move_into_place(temp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if as_json:
        console.print_json(record)
        return 0
    size = out.stat().st_size / 1e6
    key = PREFIX[chosen] + spec.primary_metric.split("/", 1)[-1]
    figure = f" ({key} {record['metrics'][key]:.4f})" if key in record["metrics"] else ""
    console.echo(f"exported {path} (epoch {state.get('epoch')}), {chosen} weights{figure} -> {out} ({fmt}, "
                 f"{size:.2f} MB, {seconds:.1f} s)")
    console.echo(f"checked with {checked_with} against the eager model on {len(images)} validation images (batch "
                 f"{len(images)} and 1): max abs diff {diff:.3g} (tolerance {tolerance:g})")
    console.echo(f"sidecar {side}")
    return 0


def _check_output(out: Path, fmt: str, overwrite: bool) -> None:
    """Bad input before anything is built: an output named for another format, a folder, or (without ``overwrite``)
    an output, sidecar or ONNX data file that exists."""
    if out.suffix != SUFFIX[fmt]:
        raise PlugtrainError(f"--output {out}: --format {fmt} writes a {SUFFIX[fmt]} file (predict and load_run tell "
                             f"the format by the suffix); name it {out.with_suffix(SUFFIX[fmt]).name} or choose "
                             "another --format")
    for p in (out, sidecar_path(out), onnx_data(out)):
        if p.is_dir():
            raise PlugtrainError(f"{p}: is a directory; --output names the file to write")
        if (p.exists() or p.is_symlink()) and not overwrite:
            raise PlugtrainError(f"{p}: already exists; plugtrain export replaces an existing file only with "
                                 "--overwrite")


def _move_into_place(temp: Path, out: Path) -> None:
    """The checked files from the temporary folder to ``out`` (``os.replace``, atomic each): the ONNX data file,
    the model, the sidecar last. A data file of the export replaced that this one does not have is removed."""
    data = onnx_data(temp)
    if data.is_file():
        os.replace(data, onnx_data(out))
    elif onnx_data(out).is_file():
        onnx_data(out).unlink()
    os.replace(temp, out)
    os.replace(sidecar_path(temp), sidecar_path(out))


def _validation_images(val_data: Any) -> Any:
    """The first validation samples of the run, through its validation pipeline: a raw ``float32`` batch."""
    from plugtrain.core.runtime.loader import Collate
    from plugtrain.core.runtime.step import batch_images

    items = [val_data[(0, i)] for i in range(min(CHECK_SAMPLES, len(val_data)))]
    return batch_images(Collate("raise")(items), "val").float()


def _export_onnx(wrapper: Any, images: Any, out: Path, spec: Any, built: Any) -> tuple[list[Any], str]:
    import warnings

    import onnxruntime
    import torch

    name = OUTPUT_NAME.get(spec.run.task, "outputs")
    inline = sum(t.numel() * t.element_size() for t in wrapper.state_dict().values()) <= ONNX_INLINE_BYTES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (images,), str(out), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[name], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              external_data=not inline, verbose=False, report=False)  # one file when it fits
    except Exception as exc:  # noqa: BLE001 - an operator the exporter does not support: one line
        raise ExportFailed(f"torch.onnx.export of {spec.backbone.name!r} failed: {type(exc).__name__}: "
                           f"{first_line(exc)}") from exc
    session = _onnx_session(out)
    run = lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])  # noqa: E731
    return [run(images), run(images[:1])], f"onnxruntime {onnxruntime.__version__}"


def _export_pt2(wrapper: Any, images: Any, out: Path, spec: Any, built: Any) -> tuple[list[Any], str]:
    import torch

    try:
        program = torch.export.export(wrapper, (images,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(out))
    except Exception as exc:  # noqa: BLE001
        raise ExportFailed(f"torch.export of {spec.backbone.name!r} failed: {type(exc).__name__}: "
                           f"{first_line(exc)}") from exc
    module = torch.export.load(str(out)).module()
    with torch.no_grad():
        return [module(images), module(images[:1])], f"torch.export.load (torch {torch.__version__})"


def _export_safetensors(wrapper: Any, images: Any, out: Path, spec: Any, built: Any) -> tuple[list[Any], str]:
    import safetensors
    import safetensors.torch
    import torch

    from plugtrain import __version__
    from plugtrain.core.runtime import build

    backbone_classes = 0 if spec.run.task == "metric_learning" else built.num_classes
    safetensors.torch.save_model(wrapper.backbone, str(out), metadata={
        "format": "pt", "plugtrain": __version__, "backbone": spec.backbone.name, "task": spec.run.task})
    fresh = build.component("backbones", rebuilt_backbone(spec), "backbone", num_classes=backbone_classes)
    missing, unexpected = safetensors.torch.load_model(fresh, str(out))
    if missing or unexpected:
        raise ExportFailed(f"{out}: loaded back, it leaves out {len(missing)} and adds {len(unexpected)} tensors")
    loaded = _normalized_class()(fresh.eval(), getattr(wrapper, "mean", None), getattr(wrapper, "std", None)).eval()
    with torch.no_grad():
        return [loaded(images), loaded(images[:1])], f"safetensors {safetensors.__version__} into a new backbone"


_EXPORTERS = {"onnx": _export_onnx, "pt2": _export_pt2, "safetensors": _export_safetensors}


def _sidecar(out: Path, fmt: str, root: Path, path: Path, state: dict[str, Any], weights: str, spec: Any, built: Any,
             images: Any, parity: dict[str, Any]) -> dict[str, Any]:
    from plugtrain import __version__
    from plugtrain.core.runtime import build
    from plugtrain.core.runtime.build import normalization
    from plugtrain.core.spec import to_dict

    c, h, w = (int(x) for x in images.shape[1:])
    graph = fmt != "safetensors"
    mean, std = normalization(spec, built.in_chans) if spec.augmentations.normalize else (None, None)
    normalization_record = {"included": graph and mean is not None, "mean": mean, "std": std,
                            "scale": 255 if mean else None,
                            "formula": "(x - 255 * mean) / (255 * std), per channel, x in 0..255" if mean else
                            "none (x as float)"}
    epoch = state.get("epoch")
    prefix = PREFIX[weights]
    row = next((r for r in reversed(state.get("history") or []) if r.get("epoch") == epoch), {})
    versions = {"plugtrain": __version__, **{d: _version(d) for d in ("torch", "timm", *NEEDS[fmt])}}
    return {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "file": out.name, "export_format": fmt,
        "data_file": onnx_data(out).name if fmt == "onnx" and onnx_data(out).is_file() else None,
        "task": spec.run.task, "class_names": list(built.class_names), "num_classes": built.num_classes,
        "input": {"name": INPUT_NAME if graph else None, "shape": ["batch", c, h, w], "channels": c, "height": h,
                  "width": w, "layout": "NCHW", "dtype": "float32", "range": [0, 255]},
        "output": {"name": OUTPUT_NAME.get(spec.run.task, "outputs") if graph else None,
                   "shape": ["batch", int(built.embedding_dim)],
                   "meaning": {"classification": "logits (apply softmax for probabilities)",
                               "regression": "predicted values", "metric_learning": "embeddings"}.get(spec.run.task)},
        "normalization": normalization_record,
        "preprocessing": {
            "order": "read the file as the reader does, apply the steps in order to the HxWxC uint8 image, "
                     "transpose to CHW and stack as float32 NCHW" + (", normalise" if mean and not graph else "")
                     + (" (the graph normalises inside)" if mean and graph else ""),
            "reader": _reader(spec, c),
            "steps": _pipeline_steps(build.build_transform(spec, "val", built.in_chans)),
            "normalization": normalization_record,
        },
        "weights": weights, "checkpoint": str(path), "epoch": epoch, "global_step": state.get("global_step"),
        "metrics": {k: v for k, v in row.items() if k.startswith(prefix)},
        "parity": parity, "versions": versions, "components": _components(spec), "run_dir": str(root),
        "spec": to_dict(spec),
    }


#: OpenCV's interpolation flags by name, as the sidecar spells a step's ``interpolation``.
INTERPOLATIONS = ("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC", "INTER_AREA", "INTER_LANCZOS4",
                  "INTER_LINEAR_EXACT", "INTER_NEAREST_EXACT")


def _interpolation_name(flag: int) -> str | None:
    try:
        import cv2
    except ImportError:
        return None
    return next((n for n in INTERPOLATIONS if getattr(cv2, n, None) == flag), None)


def _pipeline_steps(pipeline: Any) -> list[dict[str, Any]]:
    """The validation pipeline as built, step by step: each transform's name, the first line of its docstring, its
    parameters as it serialises them (``to_dict()``, as albumentations does), and for a resize its ``height`` /
    ``width`` and the OpenCV name of its ``interpolation`` (``INTER_LINEAR``: ``cv2.resize(image, (width, height),
    interpolation=cv2.INTER_LINEAR)`` gives the same pixels). A composition's children are its ``steps``."""
    if pipeline is None:
        return []
    to_dict = getattr(pipeline, "to_dict", None)
    if not callable(to_dict):
        return [_step(type(t).__name__, {}, t) for t in getattr(pipeline, "transforms", [pipeline])]
    return _steps_of(to_dict().get("transform", {}), getattr(pipeline, "transforms", []))


def _steps_of(node: dict[str, Any], objects: Any) -> list[dict[str, Any]]:
    out = []
    for i, child in enumerate(node.get("transforms") or []):
        obj = objects[i] if i < len(objects) else None
        params = {k: v for k, v in child.items() if k not in ("__class_fullname__", "transforms")}
        step = _step(str(child.get("__class_fullname__")), params, obj)
        if "transforms" in child:
            step["steps"] = _steps_of(child, getattr(obj, "transforms", []))
        out.append(step)
    return out


def _step(name: str, params: dict[str, Any], obj: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"name": name}
    for key in ("height", "width", "max_size", "size"):
        if key in params:
            step[key] = params[key]
    flag = params.get("interpolation")
    if isinstance(flag, int) and not isinstance(flag, bool):
        step["interpolation"] = _interpolation_name(flag)
        step["interpolation_flag"] = flag
    doc = (getattr(type(obj), "__doc__", None) or "").strip().split("\n", 1)[0] if obj is not None else ""
    if doc:
        step["summary"] = doc
    step["params"] = json.loads(json.dumps(params, default=str))  # JSON as written (tuples as lists, ...)
    return step


def _reader(spec: Any, channels: int) -> dict[str, Any]:
    """How a file becomes the ``HxWxC`` uint8 image the steps start from: the dataset's ``read_image``."""
    from plugtrain.core.registry import get_registry

    factory = get_registry().get("datasets", spec.data.dataset.name).factory
    read = getattr(factory, "read_image", None)
    doc = (getattr(read, "__doc__", None) or "").strip().split("\n", 1)[0] if callable(read) else \
        "plugtrain's decoder (Pillow): every pixel as stored, no EXIF rotation"
    return {"dataset": spec.data.dataset.name, "channels": channels, "channel_order": "RGB" if channels == 3 else
            "grey" if channels == 1 else f"{channels} channels", "layout": "HxWxC uint8", "does": doc}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _components(spec: Any) -> dict[str, Any]:
    """The plugin, distribution and version of the components the exported model's input and output depend on."""
    from plugtrain.core.registry import get_registry

    reg = get_registry()
    named = {"backbone": ("backbones", spec.backbone.name), "dataset": ("datasets", spec.data.dataset.name),
             "loss": ("losses", spec.loss.name)}
    named.update({f"augmentations.val[{i}]": ("augmentations", a.name) for i, a in enumerate(spec.augmentations.val)})
    out = {}
    for key, (kind, name) in named.items():
        comp = reg.get(kind, name)
        out[key] = {"name": name, "plugin": comp.plugin, "distribution": comp.distribution, "version": comp.version}
    return out


def _load_model(path: Path) -> tuple[Any, tuple[int, ...] | None, int | None]:
    """``(model, (C, H, W) it takes, values per image it gives)`` of an ``.onnx`` / ``.pt2`` file (``None`` where
    the file does not fix it); a file the runtime cannot load is bad input."""
    import torch

    kind = "ONNX model" if path.suffix == ".onnx" else "torch.export (.pt2) program"
    try:
        if path.suffix == ".onnx":
            session = _onnx_session(path)
            shapes = [i.shape for i in session.get_inputs()], [o.shape for o in session.get_outputs()]
            model: Any = session
        else:
            with _quiet_logger("torch.export"):  # it logs the traceback of its first try at a file it cannot read
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


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    from plugtrain.commands._finished_run import WEIGHTS
    from plugtrain.core.spec.model import TASKS

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
    task = check(meta, "task", lambda v: v in TASKS, f"one of {', '.join(TASKS)}")
    names = check(meta, "class_names", lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
                  "a list of strings")
    count = check(meta, "num_classes", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    if task == "classification" and names is not None and count is not None and len(names) != count:
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

    from plugtrain.core.runtime import rundir
    from plugtrain.core.spec import SpecError, load_spec
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


def _onnx_session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        if gives is not None and meta["task"] == "classification" and len(meta["class_names"]) != gives:
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
