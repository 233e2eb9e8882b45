"""Checkpoints: written atomically, holding only tensors and plain types, read with ``weights_only=True``.

A checkpoint is a dict (see :meth:`plugtrain.core.runtime.trainer.Trainer.state_dict`) with ``format`` set to
:data:`FORMAT`. It is written to a temporary file in the same directory, flushed and fsync'ed, then renamed over the
target with :func:`os.replace`, and the directory is fsync'ed: a crash at any moment leaves either the previous file
or the new one, never a torn one. Copies (``best.pt``, ``epoch-NNNN.pt``) are hard links to the file just written
when the filesystem allows it, so that a checkpoint is serialised once per save.

A process killed in the middle of a save leaves its temporary file (``.last.pt.tmp-<pid>``) behind and the previous
checkpoint untouched; :func:`remove_stale_temporaries` deletes such files of dead processes when a run resumes, and
:func:`repair_copies` re-links ``best.pt`` / ``epoch-NNNN.pt`` when the process died between writing ``last.pt`` and
linking its copies.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from plugtrain.core.errors import PlugtrainError, first_line

FORMAT = "plugtrain-checkpoint"
FORMAT_VERSION = 1


def safe_torch_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with a clear error for a missing file or a pickled object."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise PlugtrainError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PlugtrainError(
            f"{path}: refused to load: the file holds pickled Python objects, not only tensors and plain types, and "
            f"plugtrain loads with torch.load(weights_only=True) so that a file cannot run code. "
            f"({first_line(exc, 200)})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise PlugtrainError(f"{path}: not a readable torch file: {first_line(exc, 200)}") from None


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise PlugtrainError when ``obj`` holds anything but tensors, plain scalars, strings and containers of them."""
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.Size)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise PlugtrainError(f"{where}: key {k!r} of type {type(k).__name__} cannot be saved in a checkpoint")
            check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise PlugtrainError(
        f"{where} is a {type(obj).__module__}.{type(obj).__name__}: checkpoints hold only tensors and plain types "
        "(so that they load with torch.load(weights_only=True)); the component that owns it needs a plain state_dict"
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, ``os.replace`` onto ``path``, fsync the directory."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def copy_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (a byte copy where links are not possible), atomically."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete ``.NAME.tmp-PID`` files (from :func:`save_atomic` / :func:`copy_atomic`) of processes that are gone.

    Such a file is what a process killed in the middle of a save leaves behind; it was never renamed over its
    target, so it holds nothing that a checkpoint does not. Returns the names removed.
    """
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in sorted(entries):
        m = _TEMPORARY.match(p.name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        try:
            p.unlink()
        except OSError:
            continue
        removed.append(p.name)
    return removed


def repair_copies(last: Path, state: dict[str, Any]) -> list[str]:
    """Re-link ``best.pt`` and the newest ``epoch-NNNN.pt`` to ``last`` when ``state`` (loaded from ``last``) says
    they must be the same checkpoint but they are not: the process died after writing ``last.pt`` at the end of an
    epoch and before linking its copies. Returns the names repaired."""
    last = Path(last)
    step = state.get("global_step")
    if int(state.get("batch_in_epoch", 0) or 0) != 0:  # a mid-epoch last.pt has no copies
        return []
    names = []
    if (state.get("best") or {}).get("global_step") == step:
        names.append("best.pt")
    epoch_files = state.get("epoch_checkpoints") or []
    if epoch_files and epoch_files[-1][0] == f"epoch-{int(state.get('epoch', 0)):04d}.pt":
        names.append(epoch_files[-1][0])
    repaired = []
    for name in names:
        dst = last.with_name(name)
        if dst.is_file():
            if os.path.samefile(dst, last):
                continue
            try:
                if load(dst).get("global_step") == step:
                    continue
            except PlugtrainError:
                pass  # unreadable: replace it
        copy_atomic(last, dst)
        repaired.append(name)
    return repaired


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A plugtrain checkpoint, loaded with ``weights_only=True`` and checked for its format."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PlugtrainError(f"{path}: not a plugtrain checkpoint (no 'format': {FORMAT!r} key); to start from "
                             "weights only, set [backbone] pretrained to the file")
    if int(state.get("format_version", 0)) > FORMAT_VERSION:
        raise PlugtrainError(f"{path}: checkpoint format {state['format_version']} is newer than this plugtrain "
                             f"understands ({FORMAT_VERSION})")
    return state


# -- random number generators ------------------------------------------------------------------------------------------
def rng_state(device: Any = None) -> dict[str, Any]:
    """Python, numpy, torch (and this process's CUDA device) generator states, as plain types and tensors."""
    import torch

    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and getattr(device, "type", None) == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: Any = None) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and getattr(device, "type", None) == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) from one integer."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
