"""Processes and devices: single process, or DDP under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

The process group is initialised once per process (the first spec of a queue decides the backend) and torn down at
the end of the queue. Every collective used by the runtime lives here, so that the loop reads as plain code.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any

import attrs

from plugtrain.core.errors import PlugtrainError


@attrs.define
class DistEnv:
    """Where this process stands: its rank, the world, the device it trains on and the collective backend."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: Any = None  # torch.device
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def reduce_device(self) -> Any:
        """Where tensors must be for a collective: the GPU for nccl, the CPU otherwise (and in a single process)."""
        return self.device if self.backend == "nccl" else "cpu"

    # -- collectives (no-ops in a single process) ------------------------------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def all_reduce(self, tensor: Any, op: str = "sum") -> Any:
        """Reduce ``tensor`` in place across ranks (``sum`` or ``max``) and return it."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def broadcast_tensors(self, tensors: list[Any], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values (every rank passes the same shapes and dtypes
        in the same order): one collective per dtype, on the device the backend reduces on."""
        if not self.distributed or not tensors:
            return
        import torch
        import torch.distributed as dist

        by_dtype: dict[Any, list[Any]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        with torch.no_grad():
            for dtype in sorted(by_dtype, key=str):  # the same order on every rank
                group = by_dtype[dtype]
                flat = torch.cat([t.detach().reshape(-1).to(self.reduce_device) for t in group])
                dist.broadcast(flat.view(torch.uint8) if dtype == torch.bool else flat, src=src)  # gloo: no bool
                for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                    t.copy_(part.view_as(t))

    def collective_tensor(self, values: list[float]) -> Any:
        """A float64 tensor on the device the backend reduces on (the GPU for nccl, the CPU for gloo)."""
        import torch

        device = self.device if self.backend == "nccl" else "cpu"
        return torch.tensor(values, dtype=torch.float64, device=device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


_ENV: DistEnv | None = None


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise PlugtrainError(f"environment variable {name}={os.environ.get(name)!r} is not an integer") from None


def setup(device: str = "auto", backend: str = "auto") -> DistEnv:
    """The process's :class:`DistEnv`; under torchrun the process group is initialised on the first call."""
    global _ENV
    import torch

    if _ENV is not None:
        return _ENV
    world_size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local_rank = _int_env("LOCAL_RANK", 0)

    dev = _pick_device(device, local_rank)
    env = DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)
    if world_size > 1:
        import torch.distributed as dist

        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend not in ("gloo", "nccl", "mpi", "ucc", "xccl"):
            raise PlugtrainError(f"trainer.backend = {backend!r}: expected auto, gloo or nccl")
        if backend == "nccl" and dev.type != "cuda":
            raise PlugtrainError("trainer.backend = 'nccl' needs CUDA devices; use 'gloo' (or 'auto') on CPU")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=_int_env("PLUGTRAIN_DIST_TIMEOUT", 1800))
            kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
            if backend == "nccl":
                kwargs["device_id"] = dev
            store = _elastic_store(rank, world_size, timeout)
            if store is not None:
                kwargs.update(store=store, rank=rank, world_size=world_size)
            dist.init_process_group(**kwargs)
        env.backend = backend
    _ENV = env
    return env


def _elastic_store(rank: int, world_size: int, timeout: datetime.timedelta) -> Any:
    """The agent's store with a key prefix for this restart, for a restarted single-agent torchrun group.

    torchrun's c10d rendezvous shares the agent's TCPStore with the workers and keeps it across restarts with no
    per-restart key prefix (torch#135712, torch#167288): the workers of a restarted group may read the
    connection addresses of the killed ones and hang or fail in ``init_process_group``. With one agent every
    worker sees the same ``TORCHELASTIC_RESTART_COUNT``, so prefixing the keys with it separates the attempts.
    Several agents count their restarts apart (a node that restarts for a peer's failure does not count it), so
    there the default applies; for elastic multi-node runs start torchrun with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a new store per rendezvous round). ``None``: use the default."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or _int_env("GROUP_WORLD_SIZE", 1) != 1:
        return None
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    from torch.distributed import PrefixStore, TCPStore

    store = TCPStore(addr, int(port), world_size, is_master=False, timeout=timeout)
    return PrefixStore(f"plugtrain/restart-{_int_env('TORCHELASTIC_RESTART_COUNT', 0)}/", store)


def _pick_device(device: str, local_rank: int) -> Any:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PlugtrainError(f"trainer.device = {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PlugtrainError(f"trainer.device = {device!r} but CUDA is not available here; use 'auto' or 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def teardown(synchronize: bool = False) -> None:
    """Destroy the process group (end of the queue). ``synchronize`` (every rank finished its queue): meet at a
    barrier first, so that no rank tears its connections down while a peer still uses them (with gloo a peer whose
    connection is reset at exit can abort)."""
    global _ENV
    if _ENV is not None and _ENV.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            if synchronize:
                with contextlib.suppress(Exception):  # a peer that already left: nothing to wait for
                    dist.barrier()
            dist.destroy_process_group()
    _ENV = None
