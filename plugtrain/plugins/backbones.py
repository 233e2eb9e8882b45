"""Backbones: every model that ``timm.list_models()`` knows, built by timm without any download.

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
* ``pretrained``: the path of a local weights file (``.safetensors`` or a weights-only torch file). Never a hub
  download. See :func:`load_pretrained` for what must match;
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
* ``plugtrain_pretrained_report`` — ``None``, or ``{"path", "loaded", "skipped", "adapted"}`` after loading a file.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, Interval

from plugtrain import Component, hookimpl

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
):
    """A timm model (``timm.create_model``, never downloaded), with optional GeM pooling and embedding head.

    ``pretrained`` is the path of a local weights file (safetensors, or a weights-only torch file); no code path
    downloads from a hub. ``drop_rate`` is the dropout before the head, ``drop_path_rate`` the stochastic depth rate,
    ``global_pool`` timm's pooling (``avg``, ``max``, ``avgmax``, ``catavgmax``, ...) or ``gem`` (``gem_p``,
    ``gem_eps``, ``gem_learnable_p``). ``embedding_dim`` adds a linear + L2-normalisation embedding head (metric
    learning). ``freeze`` lists module-name prefixes to freeze; ``unfreeze_after_epochs`` unfreezes them after that
    many epochs (the ``unfreeze`` callback does it; the runtime adds it).
    """
    import timm

    from plugtrain.core.errors import PlugtrainError, first_line

    if pretrained is True:
        raise PlugtrainError(
            "backbone.pretrained = true would need a download, and plugtrain never downloads: "
            "set pretrained to the path of a local weights file (.safetensors or .pt)."
        )
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
    if pretrained not in (None, False, ""):
        model.plugtrain_pretrained_report = load_pretrained(model, str(pretrained), model_name=model_name)
    model.plugtrain_frozen = list(freeze or [])
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
        raise PlugtrainError(f"weights file {str(path)!r} does not exist (pretrained weights must be a local file)")
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


def load_pretrained(model: Any, path: str, model_name: str = "") -> dict[str, Any]:
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
    unexpected and mismatched keys. Returns ``{"path", "loaded", "skipped", "adapted"}``.
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
        raise PlugtrainError(
            f"weights file {path} does not fit {label}: " + "; ".join(parts)
            + ". (Only classifier/embedding-head keys may differ; is it the same architecture and in_chans?)"
        )
    target.load_state_dict(loaded, strict=False)
    return {"path": str(path), "loaded": len(loaded), "skipped": skipped, "adapted": adapted}


@hookimpl
def plugtrain_backbones():
    import timm

    return [
        Component(name, functools.partial(timm_backbone, name), summary=f"timm model {name}")
        for name in timm.list_models()
    ]
