"""``trainer.strategy = "fsdp"``: fully sharded data parallel training with FSDP2 (``torch.distributed.fsdp``).

Under torchrun with more than one process, parameters, gradients and optimizer states are sharded across the ranks
with ``fully_shard``: one unit per direct child of the backbone that holds parameters, one for the rest of the
backbone, one for the loss when it has parameters. Rank 0's parameters and buffers are broadcast first, as DDP does.

Same results as DDP: data, sampler and loop are DDP's, and :class:`ForwardSync` does what DDP does around a forward
(rank 0's buffers broadcast after a synchronising backward; gradients reduced on the last micro-batch of a group).
Evaluation unshards every unit once (:func:`unsharded`), so ranks need not run their evaluation batches in lockstep.

Checkpoints: every save writes the sharded model and optimizer states with ``torch.distributed.checkpoint`` into a new
``checkpoints/last-<step>-<id>.dcp/``; then rank 0 writes ``last.pt`` with the *full* model and loss (evaluate,
predict, best.pt and epoch-NNNN.pt work as for any run) and the DCP directory's name, and deletes older DCP
directories, so a crash leaves a ``last.pt`` whose shards exist. Resuming loads the shards (resharded when the number
of processes changed); one process or a DDP run can continue an fsdp run from them. An fsdp run cannot resume a DDP
checkpoint. Not combined with fsdp (refused by ``plugtrain check``): fp16, EMA, SWA, compile, sync_batchnorm,
channels_last; SAM optimizers are refused once built. One process trains unsharded, with a note."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plugtrain.core.errors import PlugtrainError, first_line

DCP_GLOB = "last-*.dcp"


def _has_params(module: Any) -> bool:
    return any(True for _ in module.parameters())


def _broadcast_states(modules: list[Any]) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
    import torch
    import torch.distributed as tdist

    with torch.no_grad():
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                tdist.broadcast(t.data, src=0)


def shard(built: Any, dist: Any) -> None:
    """Shard ``built.backbone`` and ``built.criterion`` in place with ``fully_shard`` and point the already built
    optimizers at the sharded parameters (FSDP2 replaces every parameter by a sharded DTensor parameter)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if getattr(built, "sam", False):
        raise PlugtrainError(f'[optimizer] {built.spec.optimizer.name!r} takes two steps per batch (SAM); it cannot be '
                             'combined with strategy = "fsdp" (yet)')
    backbone = built.backbone.to(dist.device)
    criterion = built.criterion.to(dist.device)
    modules = {"backbone": backbone, "criterion": criterion}
    names = {id(p): f"{prefix}.{n}" for prefix, m in modules.items() for n, p in m.named_parameters()}
    optimizers = [o for o in (built.optimizer, built.loss_optimizer) if o is not None]
    try:
        groups = [[[names[id(p)] for p in g["params"]] for g in opt.param_groups] for opt in optimizers]
    except KeyError:
        raise PlugtrainError(f'[optimizer] {built.spec.optimizer.name!r} holds parameters that are not the model\'s '
                             'or the loss\'s; strategy = "fsdp" cannot shard them') from None
    _broadcast_states([backbone, criterion])  # each rank keeps its slice of rank 0's model, as DDP starts from it
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    for child in backbone.children():
        if _has_params(child):
            fully_shard(child, mesh=mesh)
    fully_shard(backbone, mesh=mesh)
    if _has_params(criterion):
        fully_shard(criterion, mesh=mesh)
    new = {f"{prefix}.{n}": p for prefix, m in modules.items() for n, p in m.named_parameters()}
    for opt, opt_groups in zip(optimizers, groups, strict=True):
        for g, group_names in zip(opt.param_groups, opt_groups, strict=True):
            g["params"] = [new[n] for n in group_names]
        opt.state.clear()
    built.backbone, built.criterion = backbone, criterion


def _roots(backbone: Any, criterion: Any) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in (backbone, criterion) if isinstance(m, FSDPModule)]


def _fsdp_modules(backbone: Any, criterion: Any) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for root in (backbone, criterion) for m in root.modules() if isinstance(m, FSDPModule)]


def sync_buffers(backbone: Any, criterion: Any) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank: FSDP shards parameters only."""
    import torch
    import torch.distributed as tdist

    with torch.no_grad():
        for module in (backbone, criterion):
            for buf in module.buffers():
                tdist.broadcast(buf, src=0)


class ForwardSync:
    """What DDP does around a training forward, done for FSDP: rank 0's buffers are broadcast before a forward that
    follows a synchronising backward (DDP's ``broadcast_buffers``: batch-norm statistics stay rank 0's, so an fsdp
    run evaluates and checkpoints what the DDP run does), and gradients are reduce-scattered only on the last
    micro-batch of an accumulation group (DDP's ``no_sync``)."""

    def __init__(self, backbone: Any, criterion: Any) -> None:
        self.backbone, self.criterion = backbone, criterion
        self._broadcast_next = True

    def __call__(self, sync: bool) -> Any:
        """Before a training forward whose backward reduces gradients when ``sync``; returns a null context (the
        trainer's gradient-sync switch, as DDP's ``no_sync`` is)."""
        if self._broadcast_next:
            sync_buffers(self.backbone, self.criterion)
        self._broadcast_next = sync
        for root in _roots(self.backbone, self.criterion):
            root.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()


@contextlib.contextmanager
def unsharded(backbone: Any, criterion: Any) -> Iterator[None]:
    """The full parameters on every rank for an evaluation (collective on entry and exit).

    Evaluation batches are not in lockstep across ranks (a rank may have one batch more, or skip an unreadable one),
    so the forwards inside must not all-gather: every FSDP unit is unsharded once and kept so (``reshard_after_forward
    = False``) until the end, then resharded; meanwhile a rank holds the whole model, as in DDP."""
    roots = _roots(backbone, criterion)
    for root in roots:
        root.set_reshard_after_forward(False)
    for m in _fsdp_modules(backbone, criterion):
        m.unshard()
    try:
        yield
    finally:
        for root in roots:
            root.set_reshard_after_forward(True)  # FSDP2's defaults: non-root units reshard after forward,
            root.set_reshard_after_forward(False, recurse=False)  # the root does not (its backward needs them)
            # Forget these forwards (they had no backward): FSDP2 records each forward's order for the prefetches of
            # the next backward, and ranks that ran a different number of them would prefetch different units (a
            # hang). Also reshards every unit.
            root.reset_iter_state()


def _modules(backbone: Any, criterion: Any) -> Any:
    import torch

    return torch.nn.ModuleDict({"backbone": backbone, "criterion": criterion})


def _without_buffers(modules: Any, model_sd: dict[str, Any]) -> dict[str, Any]:
    """``model_sd`` (of :func:`_modules`) without the buffers: those are not sharded, and each rank's differ (DCP
    would keep any one rank's copy); the checkpoint's are rank 0's, in ``last.pt``, as in DDP."""
    buffers = {f"{prefix}.{n}" for prefix, m in modules.items() for n, _ in m.named_buffers()}
    return {k: v for k, v in model_sd.items() if k not in buffers}


def _load_buffers(module: Any, full: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, buf in module.named_buffers():
            if n in full:
                buf.copy_(full[n])


def all_finite(backbone: Any, dist: Any) -> bool:
    """Collective: whether every rank's shards of the backbone's parameters are finite."""
    import torch

    local = [p.to_local() if hasattr(p, "to_local") else p for p in backbone.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local if p.numel()]).all() if local else torch.tensor(True)
    bad = dist.all_reduce(dist.collective_tensor([0.0 if bool(finite) else 1.0]), op="max")
    return float(bad[0]) == 0


def save_sharded(backbone: Any, criterion: Any, optimizers: list[Any], dist: Any, directory: Path,
                 step: int) -> dict[str, Any]:
    """Collective: the sharded model and optimizer states into a new DCP directory under ``directory``; the full
    model and loss states (rank 0). Returns the entries rank 0 puts into ``last.pt`` (``{}`` on the other ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    name = dist.broadcast_object(f"last-{step:08d}-{secrets.token_hex(4)}.dcp")
    modules = _modules(backbone, criterion)
    model_sd, optim_sd = get_state_dict(modules, list(optimizers))
    dcp.save({"model": _without_buffers(modules, model_sd), "optimizers": optim_sd},
             checkpoint_id=str(Path(directory) / name))
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    backbone_sd = get_model_state_dict(backbone, options=full)
    criterion_sd = get_model_state_dict(criterion, options=full)
    if not dist.is_main:
        return {}
    return {"model": backbone_sd, "loss": criterion_sd, "optimizers": [],
            "sharded": {"format": "torch.distributed.checkpoint", "dir": name, "world_size": dist.world_size}}


def prune(ckpt_dir: Path, keep: str) -> list[str]:
    """Delete the DCP directories of earlier saves (rank 0, after ``last.pt`` names ``keep``)."""
    removed = []
    for d in sorted(Path(ckpt_dir).glob(DCP_GLOB)):
        if d.name != keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def load_sharded(backbone: Any, criterion: Any, optimizers: list[Any], state: dict[str, Any], source: Path) -> None:
    """Load the model, loss and optimizer states of an fsdp run's ``last.pt`` from its DCP directory (collective when
    distributed). Works for any trainer: sharded (any number of processes: DCP reshards), DDP or one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    info = state.get("sharded") or {}
    if not info:
        raise PlugtrainError(f"--resume {source}: not a checkpoint of an fsdp run (no sharded state); resume it with "
                             'strategy = "ddp", or start a new fsdp run from its weights with [backbone] pretrained')
    directory = Path(source).parent / info["dir"]
    if not (directory / ".metadata").is_file():
        raise PlugtrainError(f"--resume {source}: its sharded state {directory} is missing or incomplete (only the "
                             "run's last.pt keeps its shards; best.pt and epoch-NNNN.pt hold the full model only)")
    modules = _modules(backbone, criterion)
    optimizers = list(optimizers)
    try:
        model_sd, optim_sd = get_state_dict(modules, optimizers)
        loaded = {"model": _without_buffers(modules, model_sd), "optimizers": optim_sd}
        with warnings.catch_warnings():  # one process: "torch.distributed is ... uninitialized, assuming ..."
            warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled")
            dcp.load(loaded, checkpoint_id=str(directory))
        set_state_dict(modules, optimizers, model_state_dict=loaded["model"],
                       optim_state_dict=loaded["optimizers"], options=StateDictOptions(strict=False))
        _load_buffers(backbone, state["model"])  # rank 0's (batch-norm statistics), from last.pt
        _load_buffers(criterion, state["loss"])
    except Exception as exc:  # a checkpoint that does not fit this spec is bad input
        first = first_line(exc) or type(exc).__name__
        raise PlugtrainError(f"--resume {source}: cannot load the sharded state {directory}: {first} (was the spec "
                             "changed since the checkpoint?)") from None
