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

from plugtrain.core.atomic import atomic_open, fsync_dir, temp_path
from plugtrain.core.errors import PlugtrainError, first_line

FORMAT = "plugtrain-checkpoint"
FORMAT_VERSION = 1


#: A pickled global named in torch's refusal that is a real Python name (``pathlib.PosixPath``), not bytes that only
#: happened to decode as a GLOBAL opcode.
#: torch words it "Unsupported global: GLOBAL X was not an allowed global" or, for a blocked module (``posix.system``),
#: "Trying to load unsupported GLOBAL X whose module M is blocked".
_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+)"
                     r" (?:was not an allowed global|whose module)")


def safe_torch_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; any file it cannot read (text, an empty or cut-short file, a damaged
    archive, a pickle of Python objects, random bytes) is one :class:`PlugtrainError` naming the file, never the
    unpickler's ``KeyError`` / ``IndexError`` / ``struct.error`` / ... or its warnings."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    if "\x00" in str(path):
        raise PlugtrainError(f"{str(path)!r}: a path cannot hold a NUL byte")
    if path.is_dir():
        raise PlugtrainError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise PlugtrainError(f"{path}: no such file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise PlugtrainError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if size == 0:
        raise PlugtrainError(f"{path}: not a readable torch file: it is empty or cut short (0 bytes)")
    archive = head.startswith(b"PK\x03\x04")  # torch.save's zip format
    not_torch = f"{path}: not a torch checkpoint file (its bytes are not a torch.save archive)"
    try:
        with warnings.catch_warnings():  # the unpickler's warnings about odd bytes ("pickle protocol 4") are noise
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises loading with weights_only=False, which would let the file run code: never quoted
        found = _GLOBAL.search(str(exc))
        if found is None:
            raise PlugtrainError(not_torch if not archive else f"{path}: not a readable torch file: its archive "
                                 "holds something other than tensors and plain types, or is damaged") from None
        raise PlugtrainError(
            f"{path}: refused to load: the file holds a pickled Python object ({found.group(1)}), not only tensors "
            "and plain types; plugtrain loads checkpoints with torch.load(weights_only=True) so that a file cannot "
            "run code, and a plugtrain checkpoint never holds such objects"
        ) from None
    except MemoryError:
        raise PlugtrainError(f"{path}: not a readable torch file: reading it ran out of memory") from None
    except OSError as exc:
        raise PlugtrainError(f"{path}: cannot read it: {exc.strerror or first_line(exc, 200)}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler trips over in bytes that are no checkpoint
        if not archive:
            raise PlugtrainError(not_torch if not isinstance(exc, EOFError) else
                                 f"{path}: not a readable torch file: it is empty or cut short") from None
        raise PlugtrainError(f"{path}: not a readable torch file: the torch.save archive is damaged or cut short "
                             f"({type(exc).__name__}: {first_line(exc, 160)})") from None


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


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, ``os.replace`` onto ``path``, fsync the directory."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def copy_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (a byte copy where links are not possible), atomically."""
    import shutil

    tmp = temp_path(dst)
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


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


def load(path: str | os.PathLike[str], *, purpose: str = "read", model: Any = None) -> dict[str, Any]:
    """A plugtrain checkpoint, loaded with ``weights_only=True`` and checked for its format and structure.

    Every entry the runtime reads is checked for its type before anything uses it (:func:`structure_problem`), so a
    checkpoint of the wrong structure is one :class:`PlugtrainError` (exit 2), never a ``KeyError`` or
    ``TypeError`` later. ``purpose="resume"`` also requires what resuming needs (the position, the optimizer and
    loss states). With ``model`` (the ``nn.Module`` the weights are for), the model weights and any EMA / SWA
    average must fit it: the same names and shapes (:func:`fit_problem`)."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PlugtrainError(f"{path}: not a plugtrain checkpoint (no 'format': {FORMAT!r} key); to start from "
                             "weights only, set [backbone] pretrained to the file")
    version = state.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PlugtrainError(f"{path}: not a usable plugtrain checkpoint: its format_version is {version!r}, not a "
                             f"version number (this plugtrain writes {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise PlugtrainError(f"{path}: checkpoint format {version} is newer than this plugtrain "
                             f"understands ({FORMAT_VERSION})")
    problem = structure_problem(state, purpose)
    if problem is None and model is not None:
        problem = fit_problem(state, model)
    if problem is not None:
        raise PlugtrainError(f"{path}: not a usable plugtrain checkpoint: {problem}")
    return state


def _tensor_dict(value: Any, allow_numbers: bool = False) -> bool:
    import torch

    plain = (int, float) if allow_numbers else ()
    return isinstance(value, dict) and all(isinstance(k, str) and (isinstance(v, torch.Tensor) or (
        isinstance(v, plain) and not isinstance(v, bool))) for k, v in value.items())


def _known_task(name: Any) -> bool:
    """True when ``name`` is a task a plugin registers (a checkpoint of a task whose plugin is gone is not usable)."""
    from plugtrain.core.registry import get_registry

    if not isinstance(name, str):
        return False
    try:
        get_registry().get("tasks", name)
    except PlugtrainError:
        return False
    return True


def _kind(value: Any) -> str:
    return type(value).__name__


#: The top-level entries of a checkpoint: (what they must be, a check), when present.
def _entries() -> dict[str, tuple[str, Any]]:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def opt_dict(v: Any) -> bool:
        return v is None or isinstance(v, dict)

    def pair(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) and (
            v[1] is None or (isinstance(v[1], (int, float)) and not isinstance(v[1], bool)))

    return {
        "model": ("a table of tensors (the model's state_dict)", _tensor_dict),
        "loss": ("a table of tensors (the loss's state_dict)", _tensor_dict),
        "ema": ("empty, or the EMA's state_dict (a table of tensors)",
                lambda v: v is None or _tensor_dict(v, allow_numbers=True)),
        "swa": ("empty, or the SWA average's state_dict (a table of tensors)",
                lambda v: v is None or _tensor_dict(v, allow_numbers=True)),
        "epoch": ("an integer >= 0", is_int),
        "global_step": ("an integer >= 0", is_int),
        "batch_in_epoch": ("an integer >= 0", is_int),
        "optimizers": ("a list of optimizer state_dicts", lambda v: isinstance(v, list)
                       and all(isinstance(o, dict) for o in v)),
        "scheduler": ("empty or a scheduler state_dict", opt_dict),
        "swa_scheduler": ("empty or a scheduler state_dict", opt_dict),
        "scaler": ("empty or a grad scaler state_dict", opt_dict),
        "callbacks": ("a table of callback states", opt_dict),
        "frozen": ("a list of parameter names", lambda v: v is None or (isinstance(v, list)
                                                                         and all(isinstance(x, str) for x in v))),
        "history": ("a list of tables (a row per epoch)", lambda v: v is None or (
            isinstance(v, list) and all(isinstance(r, dict) for r in v))),
        "best": ("empty or a table", opt_dict),
        "epoch_checkpoints": ("a list of [file name, value] pairs", lambda v: v is None or (
            isinstance(v, list) and all(pair(e) for e in v))),
        "rng": ("a list of generator states", lambda v: v is None or (isinstance(v, list)
                                                                       and all(isinstance(r, dict) for r in v))),
        "epoch_state": ("empty or a table", opt_dict),
        "epoch_states": ("a list of tables", lambda v: v is None or (isinstance(v, list)
                                                                      and all(isinstance(r, dict) for r in v))),
        "sampler": ("a table", opt_dict),
        "meta": ("a table", opt_dict),
    }


#: What resuming needs besides the model.
RESUME_REQUIRED = ("loss", "epoch", "global_step", "batch_in_epoch", "optimizers")


def structure_problem(state: dict[str, Any], purpose: str = "read") -> str | None:
    """Why ``state`` (a dict with plugtrain's ``format``) does not have the structure plugtrain reads, or None."""
    entries = _entries()
    required = ["model", *(RESUME_REQUIRED if purpose == "resume" else ())]
    for key in required:
        if key not in state:
            return f"it has no {key!r} entry" + (" (needed to resume)" if key != "model" else "")
    for key, (what, ok) in entries.items():
        if key in state and not ok(state[key]):
            return f"its {key!r} entry is a {_kind(state[key])} that is not {what}"
    meta = state.get("meta") or {}
    meta_checks = {
        "in_chans": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "num_classes": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        "embedding_dim": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        "class_names": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "task": ("a registered task (see `plugtrain list tasks`)", _known_task),
        "input_shape": ("a list of positive integers", lambda v: isinstance(v, (list, tuple)) and all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)),
        "world_size": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "spec": ("a table", lambda v: isinstance(v, dict)),
        "best_metric": ("a string", lambda v: isinstance(v, str)),
    }
    for key, (what, ok) in meta_checks.items():
        if key in meta and not ok(meta[key]):
            return f"its meta.{key} is {meta[key]!r}, not {what}"
    if purpose == "resume" and state.get("sharded") is not None and not isinstance(state.get("sharded"), dict):
        return f"its 'sharded' entry is a {_kind(state['sharded'])}, not a table"
    return None


def _shapes(sd: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}


def _mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> str | None:
    have, want = _shapes(saved), _shapes(expected)
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    wrong = [k for k in want if k in have and have[k] != want[k]]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
                     f"{', ...' if len(unexpected) > 3 else ''})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape ({k}: {list(have[k])} here, {list(want[k])} in the model)")
    return "; ".join(parts)


def fit_problem(state: dict[str, Any], model: Any) -> str | None:
    """Why the model weights or an EMA / SWA average of ``state`` do not fit ``model`` (an ``nn.Module``), or None.

    Averages hold the averaged copy as ``module.<name>`` (timm's ``ModelEmaV3``, torch's ``AveragedModel``)."""
    expected = model.state_dict()
    diff = _mismatch(state["model"], expected)
    if diff:
        return f"its model weights do not fit the model: {diff}"
    for key, label in (("ema", "EMA"), ("swa", "SWA")):
        averaged = state.get(key)
        if not averaged:
            continue
        inner = {k.removeprefix("module."): v for k, v in averaged.items() if k.startswith("module.")}
        diff = _mismatch(inner, expected)
        if diff:
            return f"its {label} weights do not fit the model: {diff}"
    return None


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
