"""Backbones: every model that ``timm.list_models()`` knows, built by timm, with weights from a file or the hub.

Every timm model name is a backbone, with the same parameters:

* ``in_chans``, ``drop_rate`` (dropout on the pooled features, before the head), ``drop_path_rate`` (stochastic
  depth) — passed to ``timm.create_model``;
* ``global_pool``: timm's pooling (``avg``, ``max``, ``avgmax``, ``catavgmax``, ``token`` for ViTs, ...) or
  ``"gem"``: generalised-mean pooling ``(mean(x.clamp(min=eps) ** p)) ** (1 / p)`` over the feature map, with
  ``gem_p`` (3.0), ``gem_eps`` (1e-6) and ``gem_learnable_p`` (false). timm has no GeM, so the model is built with
  ``global_pool=''`` and plugtrain pools ``forward_features`` itself (convolutional models, ``(N, C, H, W)``
  feature maps, only);
* ``embedding_dim``: an embedding head for metric learning — a linear layer from the pooled features to
  ``embedding_dim`` followed by L2 normalisation. When ``num_classes`` (set by the runtime) is 0 the model outputs
  the normalised embeddings ``(N, embedding_dim)``; when it is > 0 a linear classifier follows the embedding;
* ``pretrained``: the weights to start from (:func:`weights_ref`): ``true`` (the model's default pretrained tag in
  timm, e.g. ``timm/resnet18.a1_in1k``), ``"hf-hub:ORG/NAME"`` (``@REVISION`` optional) or ``"timm/NAME.TAG"``
  (a Hugging Face Hub repository), or the path of a local weights file (``.safetensors`` or a weights-only torch
  file; relative to the working directory). Hub files are downloaded by ``huggingface_hub`` into its cache
  (``HF_HOME`` / ``HF_HUB_CACHE``), which ``HF_HUB_OFFLINE=1`` makes the only source; ``plugtrain weights fetch
  SPEC`` fills it in advance. See :func:`load_pretrained` for what must match;
* ``freeze``: module-name prefixes (``["conv1", "layer1"]``) whose parameters get ``requires_grad = False``;
  ``unfreeze_after_epochs``: when set, the built-in ``unfreeze`` callback turns them back on after that many
  epochs (see :mod:`plugtrain.plugins.callbacks`).

With neither ``gem`` pooling nor ``embedding_dim`` the factory returns the timm model itself (its state-dict keys
are timm's); otherwise a small wrapper module with the timm model as ``body`` followed by ``pool``, ``embedding``
and ``head``. Every returned model carries these attributes for the runtime:

* ``plugtrain_out_features`` — the width of the model's output (``num_classes``, the embedding size or the
  feature width); the runtime passes it to losses as their ``embedding_dim`` context;
* ``plugtrain_frozen`` — the freeze prefixes (``[]`` when none), ``plugtrain_unfreeze_after`` — the epoch count
  after which they are unfrozen (``None``: never);
* ``plugtrain_requires_callbacks`` — callback names the runtime adds to the run unless its spec lists them
  (``["unfreeze"]`` when ``unfreeze_after_epochs`` is set);
* ``plugtrain_pretrained_report`` — ``None``, or ``{"path", "loaded", "skipped", "adapted", "fresh"}`` after
  loading a file (plus ``"source"``, the hub reference, for hub weights);
* ``plugtrain_start_weights`` — ``None`` (fresh initialisation), or what the run started from
  (:func:`start_weights`), which the runtime writes into ``env.json`` and the start banner: for hub weights the
  repository, the revision the cache resolved it to (a commit hash) and the file; for a local file its path and
  SHA-256; and whether the classifier was reset and the first convolution adapted.

``plugtrain check`` (this module's ``PLUGTRAIN_VALIDATE``) looks hub weights up in the cache without any network
access: when they are not cached it warns (training will download them), or, with ``HF_HUB_OFFLINE=1`` set, reports
an error naming ``plugtrain weights fetch`` (training could not get them).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import Ge, Gt, Interval

from plugtrain import Component, hookimpl
from plugtrain.hub import HubFiles, LocalFile, cached_file, download, hub_cache_dir, hub_offline

if TYPE_CHECKING:
    from plugtrain.core.runtime.rundir import CheckContext

#: Prefixes (relative to the wrapper) of the wrapper's own head modules.
_WRAPPER_HEADS = ("pool", "embedding", "head")


@functools.cache
def _modules() -> dict[str, type]:
    """The torch module classes of this plugin, defined on first use so that importing the plugin stays cheap."""
    import torch
    import torch.nn.functional as F

    class GeM(torch.nn.Module):
        """Generalised-mean pooling of ``(N, C, H, W)`` feature maps to ``(N, C)``."""

        def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False) -> None:
            super().__init__()
            p_tensor = torch.full((1,), float(p))
            if learnable:
                self.p = torch.nn.Parameter(p_tensor)
            else:
                self.register_buffer("p", p_tensor)
            self.eps = eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim != 4:
                raise ValueError(
                    f"global_pool = 'gem' needs (N, C, H, W) feature maps from a convolutional model; this model's "
                    f"features have shape {tuple(x.shape)}. Use the model's own pooling (e.g. 'avg' or 'token')."
                )
            p = self.p.to(x.dtype)
            return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)

        def extra_repr(self) -> str:
            return f"p={float(self.p.detach()[0]):.4g}, eps={self.eps}"

    class L2Embedding(torch.nn.Module):
        """A linear projection to ``dim`` followed by L2 normalisation."""

        def __init__(self, in_features: int, dim: int) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(in_features, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.linear(x), p=2.0, dim=-1)

    class TimmWrapper(torch.nn.Module):
        """A timm model (``body``, no classifier) + pooling (``pool``) + embedding head + classifier (``head``)."""

        def __init__(self, body: torch.nn.Module, pool: torch.nn.Module | None, drop_rate: float,
                     embedding_dim: int | None, num_classes: int, in_features: int) -> None:
            super().__init__()
            self.body = body
            self.pool = pool if pool is not None else torch.nn.Identity()
            self._own_pool = pool is not None
            self.drop = torch.nn.Dropout(drop_rate) if (pool is not None and drop_rate) else torch.nn.Identity()
            width = in_features
            self.embedding = L2Embedding(in_features, embedding_dim) if embedding_dim else torch.nn.Identity()
            if embedding_dim:
                width = embedding_dim
            self.head = torch.nn.Linear(width, num_classes) if num_classes > 0 else torch.nn.Identity()
            self.num_classes = num_classes
            self.num_features = width

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            """Pooled features (after ``drop_rate`` dropout), before the embedding head."""
            if self._own_pool:
                return self.drop(self.pool(self.body.forward_features(x)))
            return self.body(x)  # timm pools and applies its head dropout; its classifier is Identity

        def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
            """The embedding (L2-normalised when ``embedding_dim`` is set), before the classifier."""
            return self.embedding(self.forward_features(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.forward_embedding(x))

    return {"GeM": GeM, "L2Embedding": L2Embedding, "TimmWrapper": TimmWrapper}


def timm_backbone(
    model_name: str,
    num_classes: int = 0,
    in_chans: Annotated[int, Ge(1)] = 3,
    pretrained: str | bool | None = None,
    drop_rate: Annotated[float, Interval(ge=0, lt=1)] = 0.0,
    drop_path_rate: Annotated[float, Interval(ge=0, lt=1)] | None = None,
    global_pool: str = "avg",
    gem_p: Annotated[float, Gt(0)] = 3.0,
    gem_eps: Annotated[float, Gt(0)] = 1e-6,
    gem_learnable_p: bool = False,
    embedding_dim: Annotated[int, Ge(1)] | None = None,
    freeze: list[str] | None = None,
    unfreeze_after_epochs: Annotated[int, Ge(0)] | None = None,
    freeze_bn: bool = False,
):
    """A timm model (``timm.create_model``), with optional GeM pooling and embedding head, from pretrained weights.

    ``pretrained``: ``true`` (the model's default pretrained weights on the Hugging Face Hub), ``"hf-hub:ORG/NAME"``
    or ``"timm/NAME.TAG"`` (a hub repository; cached by huggingface_hub, ``HF_HUB_OFFLINE=1`` honoured; fill the cache
    with ``plugtrain weights fetch SPEC``), or a local weights file (safetensors, or a weights-only torch file).
    ``drop_rate`` is the dropout before the head, ``drop_path_rate`` the stochastic depth rate,
    ``global_pool`` timm's pooling (``avg``, ``max``, ``avgmax``, ``catavgmax``, ...) or ``gem`` (``gem_p``,
    ``gem_eps``, ``gem_learnable_p``). ``embedding_dim`` adds a linear + L2-normalisation embedding head (metric
    learning). ``freeze`` lists module-name prefixes to freeze; ``unfreeze_after_epochs`` unfreezes them after that
    many epochs (the ``unfreeze`` callback does it; the runtime adds it). ``freeze_bn``: batch-norm layers whose
    parameters are all frozen run in eval mode while training, so their running statistics stay those of the
    weights (default false: they keep updating, as in timm and torchvision).
    """
    import timm

    from plugtrain.core.errors import PlugtrainError, first_line

    ref = weights_ref(model_name, pretrained)
    if embedding_dim is not None and embedding_dim <= 0:
        raise PlugtrainError(f"backbone.embedding_dim must be a positive integer, got {embedding_dim!r}")
    if unfreeze_after_epochs is not None and unfreeze_after_epochs < 0:
        raise PlugtrainError(f"backbone.unfreeze_after_epochs must be >= 0, got {unfreeze_after_epochs!r}")
    if unfreeze_after_epochs is not None and not freeze:
        raise PlugtrainError("backbone.unfreeze_after_epochs is set but backbone.freeze names no layers to freeze")
    gem = global_pool == "gem"
    wrapped = gem or bool(embedding_dim)
    kwargs: dict[str, Any] = {
        "num_classes": 0 if wrapped else num_classes,
        "in_chans": in_chans,
        "drop_rate": drop_rate,
        "global_pool": "" if gem else global_pool,
    }
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        body = timm.create_model(model_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, NotImplementedError) as exc:
        msg = first_line(exc) or type(exc).__name__
        raise PlugtrainError(f"backbone {model_name!r} cannot be built with these parameters: {msg}") from None
    if wrapped:
        mods = _modules()
        pool = mods["GeM"](gem_p, gem_eps, gem_learnable_p) if gem else None
        in_features = body.num_features if gem else _out_features(body, 0)
        model = mods["TimmWrapper"](body, pool, drop_rate, embedding_dim, num_classes, in_features)
        model.pretrained_cfg = getattr(body, "pretrained_cfg", {})
        out_features = num_classes if num_classes > 0 else (embedding_dim or in_features)
    else:
        model = body
        out_features = _out_features(body, num_classes)
    model.plugtrain_out_features = int(out_features)
    model.plugtrain_pretrained_report = None
    if ref is not None and ref.hub:
        path = hub_weights_file(ref, model_name)
        report = load_pretrained(model, path, model_name=model_name, source=ref.label)
        model.plugtrain_pretrained_report = {**report, "source": ref.label}
    elif ref is not None:
        model.plugtrain_pretrained_report = load_pretrained(model, os.path.expanduser(ref.path), model_name=model_name)
    model.plugtrain_start_weights = None
    if ref is not None:
        model.plugtrain_start_weights = start_weights(ref, model.plugtrain_pretrained_report, num_classes, in_chans)
    model.plugtrain_frozen = list(freeze or [])
    model.plugtrain_freeze_bn = bool(freeze_bn)
    model.plugtrain_unfreeze_after = unfreeze_after_epochs
    model.plugtrain_requires_callbacks = ["unfreeze"] if unfreeze_after_epochs is not None else []
    if freeze:
        freeze_prefixes(model, freeze)
    return model


def _out_features(body: Any, num_classes: int) -> int:
    if num_classes > 0:
        return num_classes
    return int(getattr(body, "head_hidden_size", None) or body.num_features)


def _matches(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def _unwrap(model: Any) -> Any:
    """The plain module behind DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    import torch

    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    for _ in range(4):
        if isinstance(model, wrappers):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    return model


def _prefixed_params(model: Any, prefixes: list[str]) -> tuple[list[Any], list[str]]:
    """Parameters whose name (or, in the wrapper, name relative to ``body``) starts with one of ``prefixes``."""
    params, unused = [], []
    named = list(model.named_parameters())
    for prefix in prefixes:
        hits = [
            p for n, p in named
            if _matches(n, prefix) or (n.startswith("body.") and _matches(n[len("body."):], prefix))
        ]
        if not hits:
            unused.append(prefix)
        params.extend(hits)
    return params, unused


def freeze_prefixes(model: Any, prefixes: list[str]) -> int:
    """Set ``requires_grad = False`` on every parameter under the module-name ``prefixes``; returns the count.

    A prefix matches a module name and everything below it (``layer1`` matches ``layer1.0.conv1.weight``, not
    ``layer10``). In the wrapper, names are matched with and without the leading ``body.``.
    """
    from plugtrain.core.errors import PlugtrainError, did_you_mean

    params, unused = _prefixed_params(model, list(prefixes))
    if unused:
        tops = [n for n, _ in model.named_children()]
        if "body" in tops:
            tops = [n for n, _ in model.body.named_children()] + [t for t in tops if t != "body"]
        raise PlugtrainError(
            f"backbone.freeze: no parameters under {unused[0]!r}."
            + did_you_mean(unused[0], tops)
            + f" The model's top-level modules: {', '.join(tops)}."
        )
    for p in params:
        p.requires_grad_(False)
    return len({id(p) for p in params})


def unfreeze_model(model: Any) -> int:
    """Turn ``requires_grad`` back on for the parameters under ``model.plugtrain_frozen``; returns the count.

    ``model`` may be wrapped by DDP or ``torch.compile``. Parameters stay in the optimizer while frozen (their
    gradient is ``None`` so every optimizer skips them), so no optimizer change is needed after unfreezing.
    """
    model = _unwrap(model)
    prefixes = list(getattr(model, "plugtrain_frozen", None) or [])
    if not prefixes:
        return 0
    params, _ = _prefixed_params(model, prefixes)
    count = 0
    for p in params:
        if not p.requires_grad:
            p.requires_grad_(True)
            count += 1
    return count


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a weights-only torch file (``{"model": sd}`` is unwrapped)."""
    from plugtrain.core.errors import PlugtrainError
    from plugtrain.core.runtime.checkpoint import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise PlugtrainError(f"weights file {str(path)!r} does not exist (a path is relative to the working "
                             "directory; hub weights are written \"hf-hub:ORG/NAME\" or pretrained = true)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise PlugtrainError(f"{path}: not a readable safetensors file: {exc}") from None
    sd = safe_torch_load(path)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise PlugtrainError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    return sd


def load_pretrained(model: Any, path: str, model_name: str = "", source: str = "") -> dict[str, Any]:
    """Load a local weights file into a backbone built by :func:`timm_backbone`.

    The file may hold a timm model's state dict (keys like ``conv1.weight``) or a plugtrain wrapper's (``body.*``,
    ``embedding.*``, ...), as saved by an earlier run; ``module.`` and ``_orig_mod.`` prefixes are removed. Either
    loads into either kind of model: a timm-keyed file into a wrapper loads into its ``body``; a wrapper file into a
    plain timm model loads the ``body`` part.

    Every key must match in name and shape, except *head* keys — timm's classifier (the ``classifier`` of the
    model's ``pretrained_cfg``: ``fc`` for ResNets, ``head`` for ViTs, ...) and the wrapper's ``pool``,
    ``embedding`` and ``head`` — which are skipped when absent on either side or of another shape (a different
    ``num_classes`` or ``embedding_dim``): those keep their fresh initialisation. The first convolution's weight
    (``first_conv``) is adapted with ``timm.models.adapt_input_conv`` when only its input-channel count differs
    (``in_chans = 1`` from RGB weights). Anything else that differs is a :class:`PlugtrainError` listing the missing,
    unexpected and mismatched keys (naming ``source``, the hub reference, when the file came from the hub).
    Returns ``{"path", "loaded", "skipped", "adapted", "fresh"}``: the count of loaded tensors, the file's head keys
    left out, the adapted first-convolution keys, and the model's head keys that keep their fresh initialisation.
    """
    import torch

    from plugtrain.core.errors import PlugtrainError

    raw = load_state_dict_file(path)
    sd: dict[str, Any] = {}
    for key, value in raw.items():
        k = str(key)
        for strip in ("module.", "_orig_mod."):
            while k.startswith(strip):
                k = k[len(strip):]
        if not isinstance(value, torch.Tensor):
            raise PlugtrainError(f"weights file {path}: entry {k!r} is a {type(value).__name__}, not a tensor")
        sd[k] = value
    is_wrapper = hasattr(model, "body") and hasattr(model, "embedding") and hasattr(model, "head")
    body = model.body if is_wrapper else model
    cfg = getattr(body, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    first_conv = cfg.get("first_conv") or ()
    first_conv = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)
    file_is_wrapper = any(k.startswith("body.") for k in sd)
    extra_skipped: list[str] = []
    if is_wrapper and file_is_wrapper:
        target, base = model, "body."
        heads = tuple(base + c for c in classifier) + _WRAPPER_HEADS
    elif is_wrapper:
        target, base, heads = body, "", classifier
    else:
        if file_is_wrapper:
            extra_skipped = [k for k in sd if not k.startswith("body.")]
            extra_skipped = [k for k in extra_skipped if any(_matches(k, h) for h in _WRAPPER_HEADS)]
            sd = {k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")} | {
                k: v for k, v in sd.items() if not k.startswith("body.") and k not in extra_skipped
            }
        target, base, heads = model, "", classifier
    conv_keys = {base + c + ".weight" for c in first_conv}

    def is_head(key: str) -> bool:
        return any(_matches(key, h) for h in heads)

    own = target.state_dict()
    loaded: dict[str, Any] = {}
    skipped = list(extra_skipped)
    adapted: list[str] = []
    mismatched: list[str] = []
    for k, v in sd.items():
        if k not in own:
            if is_head(k):
                skipped.append(k)
            continue
        want = own[k]
        if tuple(v.shape) == tuple(want.shape):
            loaded[k] = v
        elif (k in conv_keys and v.ndim == 4 and want.ndim == 4 and v.shape[0] == want.shape[0]
              and v.shape[2:] == want.shape[2:]):
            from timm.models import adapt_input_conv

            try:
                loaded[k] = adapt_input_conv(int(want.shape[1]), v, base_chans=int(v.shape[1]))
                adapted.append(k)
            except (NotImplementedError, ValueError, AssertionError):
                mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(want.shape)}")
        elif is_head(k):
            skipped.append(k)
        else:
            mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(want.shape)}")
    missing = [k for k in own if k not in sd and not is_head(k)]
    unexpected = [k for k in sd if k not in own and not is_head(k)]
    if missing or unexpected or mismatched:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {few(mismatched)}")
        label = f"backbone {model_name!r}" if model_name else "the backbone"
        what = f"weights {source} ({path})" if source else f"weights file {path}"
        raise PlugtrainError(
            f"{what} does not fit {label}: " + "; ".join(parts)
            + ". (Only classifier/embedding-head keys may differ; is it the same architecture and in_chans?)"
        )
    target.load_state_dict(loaded, strict=False)
    prefix = "body." if target is not model else ""
    done = {prefix + k for k in loaded}
    fresh = [k for k in model.state_dict() if k not in done and not _matches(k, "pool")]  # GeM's p is no head
    return {"path": str(path), "loaded": len(loaded), "skipped": skipped, "adapted": adapted, "fresh": fresh}


def start_weights(ref: WeightsRef, report: dict[str, Any], num_classes: int, in_chans: int) -> dict[str, Any]:
    """What a backbone started from, as ``env.json`` records it (``start_weights``) and the banner shows it
    (``"summary"``): the hub repository, the revision the cache resolved (the snapshot's commit hash) and the file,
    or a local file's path and SHA-256; and whether the classifier was reset (``num_classes`` unlike the weights'
    head) and the first convolution adapted (``in_chans`` unlike the weights')."""
    path = str(report["path"])
    record: dict[str, Any] = {"source": ref.label}
    if ref.hub:
        revision, file = _snapshot_revision(path)
        record.update(repo=ref.repo, requested_revision=ref.revision, revision=revision, file=file, path=path)
        what = f"{_HUB_PREFIX}{ref.repo}@{revision or ref.revision or '?'} (file {file})"
    else:
        full = os.path.abspath(path)
        digest = sha256_file(full)
        record.update(path=full, sha256=digest)
        what = f"{full} (sha256 {digest[:16]})"
    reset = bool(report.get("skipped") or report.get("fresh"))
    adapted = bool(report.get("adapted"))
    record.update(classifier_reset=reset, num_classes=int(num_classes), first_conv_adapted=adapted,
                  in_chans=int(in_chans), loaded_tensors=int(report.get("loaded", 0)))
    parts = [what]
    if reset:
        parts.append(f"classifier reset ({num_classes} classes)" if num_classes > 0 else
                     "classifier removed (features out)")
    else:
        parts.append("classifier loaded")
    if adapted:
        parts.append(f"first conv adapted to {in_chans} channel{'s' if in_chans != 1 else ''}")
    record["summary"] = "; ".join(parts)
    return record


def _snapshot_revision(path: str) -> tuple[str | None, str]:
    """``(commit, file)`` of a file in huggingface_hub's cache (``.../snapshots/<commit>/<file>``): the revision
    that the reference resolved to; ``(None, name)`` for a path outside a snapshot."""
    parts = Path(path).parts
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] == "snapshots":
            return parts[i + 1], "/".join(parts[i + 2:])
    return None, Path(path).name


def sha256_file(path: str) -> str:
    """The SHA-256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- weights from the Hugging Face Hub -------------------------------------------------------------------------------

#: The weight files a timm repository on the hub may hold, in the order they are taken (as timm does).
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_PREFIX = "hf-hub:"
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
#: A git revision the hub serves: a branch or tag (``v1.0``, ``refs/pr/1``) or a commit; no space, no ``@``.
_REVISION = re.compile(r"[A-Za-z0-9._/-]+")


class WeightsRef:
    """What ``backbone.pretrained`` names: a hub repository (``repo``, ``revision``) or a local file (``path``)."""

    def __init__(self, *, repo: str = "", revision: str | None = None, path: str = "", why: str = "") -> None:
        self.repo, self.revision, self.path, self.why = repo, revision, path, why

    @property
    def hub(self) -> bool:
        return bool(self.repo)

    @property
    def label(self) -> str:
        """``hf-hub:ORG/NAME[@REV]`` for hub weights, the path for a file."""
        if not self.hub:
            return self.path
        return f"{_HUB_PREFIX}{self.repo}" + (f"@{self.revision}" if self.revision else "")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeightsRef) and (self.repo, self.revision, self.path) == (
            other.repo, other.revision, other.path)

    def __hash__(self) -> int:
        return hash((self.repo, self.revision, self.path))

    def __repr__(self) -> str:
        return f"WeightsRef({self.label!r})"

    def hub_files(self, model_name: str = "") -> HubFiles:
        """What fetching these hub weights downloads: the first weight file the repository has and its
        ``config.json``; checked against the backbone ``model_name``'s architecture when one is given."""
        return HubFiles(self.repo, HUB_WEIGHT_FILES, revision=self.revision, optional=("config.json",),
                        key="backbone.pretrained", label=self.label, why=self.why,
                        hint="not a timm model repository?",
                        check=(lambda: architecture_problem(self, model_name)) if model_name else None)


def weights_ref(model_name: str, pretrained: Any) -> WeightsRef | None:
    """What ``pretrained`` names for the backbone ``model_name`` (None: no weights).

    * ``true``: the model's default pretrained weights in timm (``timm.models.get_pretrained_cfg(model_name)``), whose
      ``hf_hub_id`` is a hub repository such as ``timm/resnet18.a1_in1k``;
    * ``"hf-hub:ORG/NAME"`` or ``"hf-hub:ORG/NAME@REVISION"``: that hub repository (timm's own spelling);
    * ``"timm/NAME.TAG"`` that is not an existing file: the repository of timm's weights with that tag;
    * anything else: the path of a local weights file, relative to the working directory.
    """
    from plugtrain.core.errors import PlugtrainError

    if pretrained is None or pretrained is False or pretrained == "":
        return None
    if pretrained is True:
        import timm.models

        try:
            cfg = timm.models.get_pretrained_cfg(model_name, allow_unregistered=False)
        except (RuntimeError, ValueError, KeyError):
            cfg = None
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            raise PlugtrainError(
                f"backbone.pretrained: true asks for timm's default weights of {model_name!r}, and timm has none on "
                "the Hugging Face Hub; name a hub repository (\"hf-hub:ORG/NAME\") or a local weights file instead"
            )
        repo, _, revision = str(repo).partition("@")
        return WeightsRef(repo=repo, revision=revision or None, why=f"the default weights of {model_name}")
    if not isinstance(pretrained, str):
        raise PlugtrainError(f"backbone.pretrained: expected true, a hub reference or a file path, got {pretrained!r}")
    text = pretrained.strip()
    if text.startswith(_HUB_PREFIX):
        repo, at, revision = text[len(_HUB_PREFIX):].partition("@")
        if not _REPO.fullmatch(repo):
            raise PlugtrainError(f"backbone.pretrained: {pretrained!r} is not a hub reference: a hub reference is "
                                 "\"hf-hub:ORG/NAME\" (optionally \"@REVISION\"), e.g. \"hf-hub:timm/resnet18.a1_in1k\"")
        if at and not _REVISION.fullmatch(revision):
            what = "an empty revision after '@'" if not revision else f"the revision {revision!r}, which is not one"
            raise PlugtrainError(f"backbone.pretrained: {pretrained!r} names {what}: write \"hf-hub:{repo}@REVISION\" "
                                 f"(a branch, tag or commit) or \"hf-hub:{repo}\" for the default branch")
        return WeightsRef(repo=repo, revision=revision or None)
    if (text.startswith("timm/") and _REPO.fullmatch(text) and not os.path.exists(os.path.expanduser(text))
            and not text.lower().endswith(_WEIGHT_SUFFIXES)):
        return WeightsRef(repo=text)
    return WeightsRef(path=text)


def cached_weights_file(ref: WeightsRef) -> str | None:
    """The cached weight file of the hub reference ``ref``, or None; never touches the network."""
    return cached_file(ref.hub_files())


def download_weights(ref: WeightsRef) -> str:
    """The local path of ``ref``'s weight file: from the cache, else downloaded into it (:func:`plugtrain.hub.download`;
    ``HF_HUB_OFFLINE=1`` allows the cache only). Also fetches the repository's ``config.json`` when it has one.
    Raises :class:`PlugtrainError` with one line when the file cannot be had."""
    return download(ref.hub_files())


def hub_config(ref: WeightsRef) -> dict[str, Any] | None:
    """The repository's cached ``config.json`` (timm's model config), or None; never touches the network."""
    import json

    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo, "config.json", revision=ref.revision)
    if not isinstance(found, str):
        return None
    try:
        with open(found, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def hub_weights_file(ref: WeightsRef, model_name: str) -> str:
    """The weight file of hub reference ``ref`` for the backbone ``model_name``: cached or downloaded, and checked
    against the repository's ``config.json`` architecture when there is one."""
    from plugtrain.core.errors import PlugtrainError

    path = download_weights(ref)
    problem = architecture_problem(ref, model_name)
    if problem:
        raise PlugtrainError(f"backbone.pretrained: {problem}")
    return path


def architecture_problem(ref: WeightsRef, model_name: str) -> str | None:
    """Why the hub weights ``ref`` do not fit the backbone ``model_name``, by the architecture that the
    repository's cached ``config.json`` names (timm writes it); None when it fits or no config is cached. Never
    touches the network: ``plugtrain check``, ``weights fetch`` and the build all ask it."""
    cfg = hub_config(ref) or {}
    arch = cfg.get("architecture") or (cfg.get("pretrained_cfg") or {}).get("architecture")
    if isinstance(arch, str) and model_name and arch.split(".")[0] != model_name.split(".")[0]:
        return (f"{ref.label} holds weights of a timm {arch!r} (its config.json), not of the backbone "
                f"{model_name!r}: set backbone.name = {arch.split('.')[0]!r}")
    return None


def validate(factory: Any, params: dict[str, Any], defaults: dict[str, Any],
             context: CheckContext | None = None) -> list[tuple[str | None, str, bool]]:
    """``plugtrain check`` of a backbone's ``pretrained`` (this module's ``PLUGTRAIN_VALIDATE``): the reference must
    parse (a revision after ``@`` is not empty), and hub weights are looked up in the cache (no network): missing is
    a warning (training will download them), or an error when ``HF_HUB_OFFLINE`` is set (training could not); a
    cached ``config.json`` naming another architecture than the backbone is an error (:func:`architecture_problem`). A local file must exist (training would
    stop on it before its first step), or lie in the run directory of a spec queued before this one (``plugtrain
    check STAGE1 STAGE2``: ``context.written_by_queue``); what it holds is checked when the backbone is built.
    Neither is looked up where ``context.start_inputs_needed`` is False (a finished run reopened, ``weights fetch``)."""
    from plugtrain.core.errors import PlugtrainError
    from plugtrain.core.runtime.rundir import CheckContext

    context = context if context is not None else CheckContext()

    pretrained = params.get("pretrained", defaults.get("pretrained"))
    model_name = factory.args[0] if isinstance(factory, functools.partial) and factory.args else ""
    try:
        ref = weights_ref(model_name, pretrained)
    except PlugtrainError as exc:
        return [("pretrained", str(exc).removeprefix("backbone.pretrained: "), False)]
    if ref is None or not context.start_inputs_needed:
        return []
    if not ref.hub:
        return _local_file_problems(ref.path, context)
    try:
        cached = cached_weights_file(ref)
        wrong = architecture_problem(ref, model_name)
    except Exception:  # an unreadable cache is the build's to report
        return []
    if wrong:
        return [("pretrained", wrong, False)]
    if cached is not None:
        return []
    what = f"{ref.label}" + (f" ({ref.why})" if ref.why else "")
    if hub_offline():
        return [("pretrained", f"{what} is not in the Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is "
                               f"set, so training cannot get it: run `plugtrain weights fetch SPEC` where there is "
                               "network (with the same HF_HOME) to fill the cache", False)]
    return [("pretrained", f"{what} is not in the Hugging Face cache yet ({hub_cache_dir()}): training will download "
                           "it; on a machine without network run `plugtrain weights fetch SPEC` first", True)]


def _local_file_problems(path: str, context: CheckContext) -> list[tuple[str | None, str, bool]]:
    """``pretrained`` naming a local file: it must be a file that is there (relative to the working directory), or
    one a spec queued before this one writes."""
    full = os.path.abspath(os.path.expanduser(path))
    try:
        if os.path.isfile(full) or (not os.path.exists(full) and context.written_by_queue(full)):
            return []
        what = ("is a directory, not a weights file" if os.path.isdir(full) else
                "does not exist (when an earlier run writes it, check the specs as the queue they are: `plugtrain "
                "check EARLIER.toml THIS.toml`)")
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long
        what = f"cannot be a file ({exc})"
    where = "" if os.path.isabs(os.path.expanduser(path)) else f" (relative to the working directory {os.getcwd()})"
    return [("pretrained", f"{path!r}{where} {what}: name a .safetensors or weights-only torch file, a hub "
                           "reference (\"hf-hub:ORG/NAME\"), or true for timm's default weights", False)]


PLUGTRAIN_VALIDATE = validate


def fetch_needs(factory: Any, params: dict[str, Any]) -> list[HubFiles | LocalFile]:
    """What ``plugtrain weights fetch`` downloads for the backbone ``factory`` builds (this module's
    ``PLUGTRAIN_FETCH``, :mod:`plugtrain.hub`): its ``pretrained`` hub weights, a local file (reported only), or
    nothing (it starts from scratch). A reference that does not parse raises :class:`PlugtrainError`."""
    model_name = factory.args[0] if isinstance(factory, functools.partial) and factory.args else ""
    ref = weights_ref(model_name, params.get("pretrained"))
    if ref is None:
        return []
    return [ref.hub_files(model_name) if ref.hub else LocalFile(ref.path)]


PLUGTRAIN_FETCH = fetch_needs


@functools.cache
def _hub_tags() -> dict[str, tuple[tuple[str, str], ...]]:
    """``{model name: ((tag, "hf-hub:REPO"), ...)}`` for every timm pretrained tag with weights on the hub, the
    model's default (what ``pretrained = true`` loads) first, then the others in name order."""
    import timm
    import timm.models

    tags: dict[str, list[tuple[str, str]]] = {}
    for full in timm.list_pretrained():
        name, _, tag = full.partition(".")
        try:
            repo = timm.models.get_pretrained_cfg(full).hf_hub_id
        except (RuntimeError, ValueError, KeyError, AttributeError):
            repo = None
        if repo:
            tags.setdefault(name, []).append((tag, _HUB_PREFIX + str(repo)))
    from plugtrain.core.errors import PlugtrainError

    out = {}
    for name, found in tags.items():
        try:
            default = weights_ref(name, True).label  # type: ignore[union-attr]
        except PlugtrainError:  # the default tag has no hub weights: keep name order
            default = ""
        found.sort(key=lambda item: item[1] != default)  # stable
        out[name] = tuple(found)
    return out


def pretrained_tags(factory: Any) -> list[tuple[str, str]]:
    """``[(tag, "hf-hub:REPO"), ...]``: the pretrained weights timm has on the hub for the backbone that ``factory``
    builds, default first; ``[]`` when none (this module's ``PLUGTRAIN_PRETRAINED``, read by ``plugtrain list
    backbones --pretrained``)."""
    name = factory.args[0] if isinstance(factory, functools.partial) and factory.args else ""
    return list(_hub_tags().get(name, ()))


PLUGTRAIN_PRETRAINED = pretrained_tags


def weights_note(model_name: str, pretrained: Any) -> str | None:
    """One line on the hub weights a backbone names, for ``plugtrain check``'s output (no network): ``"weights
    hf-hub:timm/resnet18.a1_in1k: cached"`` / ``"...: not cached"``; None for no weights or a local file."""
    from plugtrain.core.errors import PlugtrainError

    try:
        ref = weights_ref(model_name.rpartition(":")[2], pretrained)
    except PlugtrainError:
        return None
    if ref is None or not ref.hub:
        return None
    return f"weights {ref.label}: {'cached' if cached_weights_file(ref) is not None else 'not cached'}"


_MONAI = ("is a component of the plugtrain-monai extra (volumes and signals), which is not loaded (not installed, or "
          "disabled): pip install ./extras/plugtrain-monai (from a plugtrain checkout; `make test` installs it)")
_SMP = ("is a component of the plugtrain-segmentation extra, which is not loaded (not installed, or disabled): pip "
        "install ./extras/plugtrain-segmentation (from a plugtrain checkout; `make test` installs it)")

#: Hints for the names of the extras' components when the extra is missing (:mod:`plugtrain.core.spec.retired`).
PLUGTRAIN_RETIRED = {
    "backbones": {"monai-*": f"a MONAI backbone {_MONAI}", "smp-*": f"an smp backbone {_SMP}"},
    "augmentations": {"monai-*": f"a MONAI transform {_MONAI}"},
    "datasets": {"volumes": f"the volumes dataset {_MONAI}", "segmentation-pairs": f"the dataset {_SMP}"},
}

#: What timm's models declare: they take 2-D images (``check`` refuses them on signals or volumes).
IMAGES_2D = {"spatial_dims": (2,)}


@hookimpl
def plugtrain_backbones():
    import timm

    return [
        Component(name, functools.partial(timm_backbone, name), summary=f"timm model {name}", fits=IMAGES_2D)
        for name in timm.list_models()
    ]
