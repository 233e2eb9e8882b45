"""``plugtrain export RUN_DIR [--checkpoint best|last|PATH] [--format onnx|pt2|safetensors] [--weights model|ema|swa]
[--output PATH] [--tolerance T] [--json] [--overwrite]``: a finished run's model as a file usable outside training.

* ``onnx`` (``torch.onnx.export(dynamo=True)``; needs the ``export`` extra: onnx, onnxruntime, onnxscript) and
  ``pt2`` (``torch.export``): a graph that takes ``float32`` ``NCHW`` pixel values as read (0..255: cast ``uint8``
  images; with ``pixels = "raw"`` the stored values, the sidecar's ``input.pixel_dtype`` and ``normalization.scale``)
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
(:class:`plugtrain.inference.ExportedModel`); the sidecar is checked against its schema
(:func:`plugtrain.inference.read_sidecar`) and the file against it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from pathlib import Path
from typing import Any

from plugtrain.commands._finished_run import build_for_eval
from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.inference import (
    FORMATS,
    INPUT_NAME,
    NEEDS,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    SUFFIX,
    check_weights,
    checkpoint_path,
    load_weights,
    local_env,
    onnx_data,
    onnx_session,
    open_run,
    rebuilt_backbone,
    require,
    sidecar_path,
)

CHECK_SAMPLES = 32
#: The metrics.csv prefix of each choice of weights.
PREFIX = {"model": "val/", "ema": "val_ema/", "swa": "val_swa/"}


class ExportFailed(PlugtrainError):
    """The exporter failed, or the exported model does not match the eager one: exit code 1."""

    exit_code = 1


#: Above this many bytes of weights an ONNX file keeps them in :func:`onnx_data` (protobuf's limit is 2 GB).
ONNX_INLINE_BYTES = 1_800_000_000


def _normalized_class() -> type:
    import torch

    class Normalized(torch.nn.Module):
        """``float32 NCHW`` pixel values as read (0..255, or raw values) -> the backbone's output, normalised inside as
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
                from plugtrain.core.runtime.step import per_channel

                x = (x - per_channel(self.mean, x)) / per_channel(self.std, x)
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
    return batch_images(Collate("raise", getattr(val_data, "task", None))(items), "val").float()


def _export_onnx(wrapper: Any, images: Any, out: Path, spec: Any, built: Any) -> tuple[list[Any], str]:
    import warnings

    import onnxruntime
    import torch

    name = spec.task_object.export_output(built.num_classes, built.embedding_dim)["name"]
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
    session = onnx_session(out)
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

    backbone_classes = spec.task_object.backbone_classes(built.num_classes)
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

    c, *spatial = (int(x) for x in images.shape[1:])
    layout = "NC" + {1: "L", 2: "HW", 3: "DHW"}.get(len(spatial), "...")
    sizes = dict(zip(("height", "width"), spatial, strict=True)) if len(spatial) == 2 else {"spatial_size": spatial}
    graph = fmt != "safetensors"
    mean, std = normalization(spec, built.in_chans) if spec.augmentations.normalize else (None, None)
    scale, dtype = build.pixel_scale(spec), build.data_dtype(built.splits.train)  # raw pixels: uint16, float32
    scale_text = f"{scale:g}"
    normalization_record = {"included": graph and mean is not None, "mean": mean, "std": std,
                            "scale": scale if mean else None,
                            "formula": f"(x - {scale_text} * mean) / ({scale_text} * std), per channel, x the "
                                       f"{dtype} pixel values" if mean else "none (x as float)"}
    epoch = state.get("epoch")
    prefix = PREFIX[weights]
    row = next((r for r in reversed(state.get("history") or []) if r.get("epoch") == epoch), {})
    versions = {"plugtrain": __version__, **{d: _version(d) for d in ("torch", "timm", *NEEDS[fmt])}}
    output = spec.task_object.export_output(built.num_classes, built.embedding_dim)  # what the run's task outputs
    return {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "file": out.name, "export_format": fmt,
        "data_file": onnx_data(out).name if fmt == "onnx" and onnx_data(out).is_file() else None,
        "task": spec.run.task, "class_names": list(built.class_names), "num_classes": built.num_classes,
        "input": {"name": INPUT_NAME if graph else None, "shape": ["batch", c, *spatial], "channels": c, **sizes,
                  "layout": layout, "dtype": "float32", "pixel_dtype": dtype,
                  "range": [0, 255] if dtype == "uint8" else [0, 65535] if dtype == "uint16" else None},
        "output": {**output, "name": output["name"] if graph else None},
        "normalization": normalization_record,
        "preprocessing": {
            "order": f"read the file as the reader does, apply the steps in order to the HxWxC {dtype} image, "
                     "transpose to CHW and stack as float32 NCHW" + (", normalise" if mean and not graph else "")
                     + (" (the graph normalises inside)" if mean and graph else ""),
            "reader": {**_reader(spec, c), "layout": f"HxWxC {dtype}",
                       "pixels": spec.data.dataset.params.get("pixels", "uint8"),
                       "channel_indices": (spec.data.dataset.params.get("channels")
                                           if isinstance(spec.data.dataset.params.get("channels"), list) else None)},
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
    """How a file becomes the ``HxWxC`` image the steps start from: the dataset's ``read_image`` (the caller records
    the pixels' dtype: uint8, or uint16 / float32 with ``pixels = "raw"``)."""
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


