"""``plugtrain export RUN_DIR [--checkpoint best|last|PATH] [--format onnx|pt2|safetensors] [--weights model|ema|swa]
[--output PATH] [--tolerance T] [--json]``: a finished run's model as a file usable outside training.

* ``onnx`` (``torch.onnx.export(dynamo=True)``; needs the ``export`` extra: onnx, onnxruntime, onnxscript) and
  ``pt2`` (``torch.export``): a graph that takes ``float32`` ``NCHW`` pixel values 0..255 (cast ``uint8`` images)
  with a dynamic batch axis, normalises them inside with the run's mean / std, and returns what the backbone
  returns (logits, regression values or embeddings). Usable alone: resize to the sidecar's input size and feed.
* ``safetensors``: the backbone's state dict (no graph, no normalisation: apply the sidecar's mean / std).

The weights are the run's EMA when the checkpoint holds one, else the model (``--weights`` chooses; the output says
which). Next to the file, ``<file>.json`` (the sidecar) records the class names, task, input size and channels, the
normalisation, the weights, checkpoint and epoch, the validation metrics of those weights at that epoch, the
resolved spec, and the versions of plugtrain, torch, the exporter and each component's plugin. An ONNX model over
protobuf's 2 GB limit keeps its weights beside it in ``<file>.data`` (the sidecar's ``data_file``); any other is one
file.

Export checks itself: the exported file, loaded back (onnxruntime; ``torch.export.load``; the safetensors loaded
into a freshly built backbone), against the eager model on real validation images of the run (the dataset rebuilt
from the run's spec), at the batch size and at batch 1. The largest absolute difference is printed; above
``--tolerance`` (1e-4) the files are removed and the exit code is 1. ``plugtrain predict`` and
``plugtrain.load_run`` take an exported ``.onnx`` / ``.pt2`` file (with its sidecar) instead of a run directory
(:class:`ExportedModel`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time
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
SIDECAR_VERSION = 1
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
        output: str | None = None, tolerance: float = 1e-4, as_json: bool = False) -> int:
    """Export ``weights`` of ``checkpoint`` of ``run_dir`` as ``fmt``, check it, write the sidecar; exit code 0."""
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
    env = local_env(spec, "cpu")  # exported on the CPU: a graph without device-specific kernels
    built = build_for_eval(spec, env)
    load_weights(built.backbone, state, chosen, path, spec)
    model_input = ModelInput.for_spec(spec, built.in_chans, env.device)
    wrapper = _normalized_class()(built.backbone, model_input.mean, model_input.std).eval()
    images = _validation_images(built.val_data)
    out = Path(output) if output else root / "export" / f"{path.stem}-{chosen}{SUFFIX[fmt]}"
    side = sidecar_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        with torch.no_grad():
            want = [wrapper(images), wrapper(images[:1])]
        got, checked_with = _EXPORTERS[fmt](wrapper, images, out, spec, built)
        diff = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True))
        if not diff <= tolerance:
            raise ExportFailed(f"{out}: the exported model differs from the eager model by {diff:.3g} (max abs, on "
                               f"{len(images)} validation images), more than --tolerance {tolerance:g}; removed")
        seconds = time.monotonic() - t0
        record = _sidecar(out, fmt, root, path, state, chosen, spec, built, images,
                          {"max_abs_diff": diff, "tolerance": tolerance, "samples": int(images.shape[0]),
                           "batch_sizes": [int(images.shape[0]), 1], "checked_with": checked_with,
                           "seconds": round(seconds, 3)})
        side.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        for p in (out, side, onnx_data(out)):
            p.unlink(missing_ok=True)
        raise
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
    from plugtrain.core.runtime.build import normalization
    from plugtrain.core.spec import to_dict

    c, h, w = (int(x) for x in images.shape[1:])
    graph = fmt != "safetensors"
    mean, std = normalization(spec, built.in_chans) if spec.augmentations.normalize else (None, None)
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
        "normalization": {"included": graph and mean is not None, "mean": mean, "std": std,
                          "formula": "(x - 255 * mean) / (255 * std), per channel, x in 0..255" if mean else
                          "none (x as float)"},
        "weights": weights, "checkpoint": str(path), "epoch": epoch, "global_step": state.get("global_step"),
        "metrics": {k: v for k, v in row.items() if k.startswith(prefix)},
        "parity": parity, "versions": versions, "components": _components(spec), "run_dir": str(root),
        "spec": to_dict(spec),
    }


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
    (normalisation is inside)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from plugtrain.core.spec import from_dict

        path = Path(path)
        side = sidecar_path(path)
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PlugtrainError(f"{path}: no sidecar {side.name} beside it (plugtrain export writes one)") from None
        except (OSError, ValueError) as exc:
            raise PlugtrainError(f"{side}: not readable JSON: {first_line(exc)}") from None
        if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or not isinstance(meta.get("spec"), dict):
            raise PlugtrainError(f"{side}: not a plugtrain export sidecar (no 'format': {SIDECAR_FORMAT!r})")
        spec = from_dict(meta["spec"])
        super().__init__(spec, class_names=meta.get("class_names") or [], task=meta.get("task", spec.run.task),
                         in_chans=int(meta["input"]["channels"]), source=str(path), checkpoint=meta.get("checkpoint"),
                         weights=meta.get("weights", "model"), epoch=meta.get("epoch"))
        self.sidecar = meta
        if path.suffix == ".onnx":
            require("onnx", ("onnxruntime",))
            self.model = _onnx_session(path)
        else:
            import torch

            self.model = torch.export.load(str(path)).module()

    def forward_raw(self, raw: Any) -> Any:
        import torch

        x = raw.float()
        if isinstance(self.model, torch.nn.Module):
            with torch.no_grad():
                return self.model(x).float()
        return torch.from_numpy(self.model.run(None, {INPUT_NAME: x.numpy()})[0]).float()

    def transform(self, image: Any) -> Any:
        return super().transform(image).float()

    def describe(self) -> str:
        return f"{self.source} (exported from {self.checkpoint}, epoch {self.epoch}), {self.weights} weights"
