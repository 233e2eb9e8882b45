"""The run directory ``<output_dir>/<run.name>/`` and what goes in it besides checkpoints and logs.

Contract: ``spec.toml`` (the resolved spec), ``env.json`` (versions, plugins, git revision, world size, host, start
time), ``metrics.csv`` (a row per epoch), ``tb/`` (TensorBoard), ``checkpoints/`` (``last.pt``, ``best.pt``,
``epoch-NNNN.pt``). An existing run directory is never replaced without ``--overwrite`` and never continued without
``--resume``; the directory is created only once everything that can fail on bad input has been built.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

import attrs

from plugtrain.core.errors import PlugtrainError

CHECKPOINTS = "checkpoints"
#: Files whose presence marks a directory as a plugtrain run directory (only those are ever deleted by --overwrite).
MARKERS = ("spec.toml", "env.json", CHECKPOINTS)
#: The longest file name (one path component, in bytes) that common filesystems take.
NAME_MAX = 255


# -- paths inside the run directory --------------------------------------------------------------------------------
@attrs.frozen
class InsideRunDir:
    """Annotation marker: the parameter names a file or folder *inside* the run directory (see :data:`RunPath`)."""

    what: str = "a path inside the run directory"


#: The annotation of a component parameter that names a file or folder the component writes in the run directory:
#: ``def __init__(self, run_dir: Path, filename: RunPath = "metrics.jsonl")``. ``plugtrain check`` refuses, with
#: ``file:line:col``, a value that is absolute, climbs out with ``..``, is empty or holds a NUL byte; at run time
#: :func:`run_path` turns it into the path (and refuses a symbolic link that leads outside).
RunPath = Annotated[str, InsideRunDir()]


def run_path_problem(relative: Any) -> str | None:
    """Why ``relative`` cannot name a path inside a run directory, or ``None`` when it can."""
    if not isinstance(relative, (str, os.PathLike)):
        return f"expected a relative path (a string), got {type(relative).__name__}"
    text = os.fspath(relative)
    if not isinstance(text, str):
        return "expected a relative path (a string)"
    if not text.strip():
        return "is empty"
    if "\x00" in text:
        return "holds a NUL byte"
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive \
            or text.startswith(("/", "\\")):
        return f"{text!r} is an absolute path: it must be relative to the run directory"
    if text.startswith("~"):
        return f"{text!r} starts with '~' (a home directory): it must be relative to the run directory"
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return f"{text!r} climbs out of the run directory with '..': it must stay inside it"
    long = next((p for p in parts if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX), None)
    if long is not None:
        return f"the name {long[:20]!r}... is longer than {NAME_MAX} bytes"
    return None


def run_path(run_dir: str | os.PathLike[str], relative: str | os.PathLike[str], what: str = "path") -> Path:
    """``run_dir / relative``, refused (:class:`PlugtrainError`, exit 2) unless it stays inside ``run_dir``.

    The one way for a component to get the path of a file it writes: ``what`` names the parameter in the message
    (``"[loggers] csv filename"``). Absolute paths, ``..`` and NUL bytes are refused, and so is a path that a
    symbolic link inside the run directory leads outside of it."""
    problem = run_path_problem(relative)
    if problem is not None:
        raise PlugtrainError(f"{what}: {problem}")
    base = Path(run_dir)
    path = base / os.fspath(relative)
    resolved, root = path.resolve(), base.resolve()
    if resolved != root and root not in resolved.parents:
        raise PlugtrainError(f"{what}: {os.fspath(relative)!r} leads to {resolved}, outside the run directory {root}")
    return path


def run_dir_for(output_dir: str, name: str) -> Path:
    """``output_dir/name``, refusing a name that would leave ``output_dir`` (``..``, an absolute path, empty)."""
    if not name or not name.strip():
        raise PlugtrainError("[run] name is empty")
    p = Path(name)
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise PlugtrainError(f"[run] name = {name!r} is an absolute path; a run name must stay inside output_dir")
    if any(part in ("..", ".") for part in Path(name).parts) or "\x00" in name:
        raise PlugtrainError(f"[run] name = {name!r} leaves output_dir; use a plain name (sub/folders allowed, no '..')")
    base = Path(output_dir)
    run_dir = base / name
    resolved_base = base.resolve()
    resolved = run_dir.resolve()
    if resolved == resolved_base or resolved_base not in resolved.parents:
        raise PlugtrainError(f"[run] name = {name!r} resolves to {resolved}, outside output_dir {resolved_base}")
    return run_dir


@attrs.define
class Plan:
    """What to do with the run directory: ``new``, ``overwrite`` (replace it) or ``resume`` (from ``checkpoint``)."""

    run_dir: Path
    mode: str
    checkpoint: Path | None = None
    note: str | None = None


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in MARKERS)


def plan(run_dir: Path, resume: str | None, overwrite: bool) -> Plan:
    """Decide, before anything is written, how this invocation treats ``run_dir``."""
    if resume and overwrite:
        raise PlugtrainError("--resume and --overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise PlugtrainError(f"run directory {run_dir} exists and is not a directory")
    exists = run_dir.is_dir() and any(run_dir.iterdir())
    if resume == "auto":
        last = run_dir / CHECKPOINTS / "last.pt"
        if last.is_file():
            return Plan(run_dir, "resume", last)
        if exists:
            _check_replaceable(run_dir, "--resume auto")
            return Plan(run_dir, "overwrite", note=f"no checkpoint in {run_dir / CHECKPOINTS}; starting from scratch")
        return Plan(run_dir, "new", note=f"nothing to resume in {run_dir}; starting from scratch")
    if resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise PlugtrainError(f"--resume {resume}: no such checkpoint file (use --resume auto for the run's last.pt)")
        return Plan(run_dir, "resume", ckpt)
    if exists:
        if not overwrite:
            raise PlugtrainError(
                f"run directory {run_dir} already exists: pass --resume auto to continue it, --overwrite to replace "
                "it, or choose another run.name"
            )
        _check_replaceable(run_dir, "--overwrite")
        return Plan(run_dir, "overwrite")
    return Plan(run_dir, "new")


def _check_replaceable(run_dir: Path, flag: str) -> None:
    if not is_run_dir(run_dir):
        raise PlugtrainError(f"{flag}: refusing to delete {run_dir}: it is not a plugtrain run directory "
                             f"(none of {', '.join(MARKERS)} in it)")


def prepare(p: Plan) -> bool:
    """Create (or empty, for ``overwrite``) the run directory. Returns True when this call created its content."""
    if p.mode == "overwrite" and p.run_dir.exists():
        shutil.rmtree(p.run_dir)
    created = not p.run_dir.exists() or p.mode != "resume"
    (p.run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    return created


def discard(run_dir: Path) -> None:
    """Remove a run directory this invocation created, after a failure before training started."""
    if run_dir.is_dir() and is_run_dir(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)


def write_spec(run_dir: Path, spec_dict: dict[str, Any]) -> None:
    import tomli_w

    text = "# The resolved run spec of this run (written by plugtrain).\n" + tomli_w.dumps(spec_dict)
    _write_text(run_dir / "spec.toml", text)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def git_revision(where: Path) -> dict[str, Any] | None:
    """The git commit (and whether the tree is dirty) of the repository containing ``where``, if any."""
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if rev.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": rev.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment(world_size: int, spec_source: str | None) -> dict[str, Any]:
    """The env.json record: interpreter, torch and CUDA, every plugin distribution, git, world, host, time."""
    import torch

    from plugtrain import __version__
    from plugtrain.core.registry import get_registry

    plugins = sorted({p.dist_label for p in get_registry().plugins if p.distribution})
    cuda: dict[str, Any] = {"available": torch.cuda.is_available(), "version": torch.version.cuda}
    if torch.cuda.is_available():
        cuda["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        cuda["cudnn"] = torch.backends.cudnn.version()
    where = Path(spec_source).resolve().parent if spec_source else Path.cwd()
    return {
        "plugtrain": __version__,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": cuda,
        "plugins": plugins,
        "plugin_entry_points": [
            {"name": p.name, "distribution": p.distribution, "version": p.version, "error": p.error}
            for p in get_registry().plugins
        ],
        "git": git_revision(where) or git_revision(Path.cwd()),
        "world_size": world_size,
        "hostname": socket.gethostname(),
        "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "spec_file": str(Path(spec_source).resolve()) if spec_source else None,
    }


def write_env(run_dir: Path, env: dict[str, Any], resumed_from: Path | None = None) -> None:
    """Write env.json; a resumed run keeps the first record and appends this start to ``resumes``."""
    path = run_dir / "env.json"
    if resumed_from is not None and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict):
            old.setdefault("resumes", []).append({**env, "checkpoint": str(resumed_from)})
            env = old
    elif resumed_from is not None:  # --resume PATH into a new run directory: say where it started from
        env = {**env, "resumed_from": str(resumed_from)}
    _write_text(path, json.dumps(env, indent=2, default=str) + "\n")
