"""The run directory ``<output_dir>/<run.name>/`` and what goes in it besides checkpoints and logs.

Contract: ``spec.toml`` (the resolved spec), ``env.json`` (versions, plugins, git revision, world size, host, start
time), ``metrics.csv`` (a row per epoch), ``tb/`` (TensorBoard), ``checkpoints/`` (``last.pt``, ``best.pt``,
``epoch-NNNN.pt``).

What is guaranteed (:func:`plan`, :class:`Opening`):

* An existing run directory is never replaced without ``--overwrite`` and never continued without ``--resume``.
* ``--overwrite`` keeps the old run intact until the new one has passed everything that can fail before training
  (spec, data, model, pre-flight, loggers): the new directory is written under a temporary sibling name, the old one
  renamed aside, the new one renamed into place, and the old one deleted only then; a failure up to then renames it
  back. A process killed in that window leaves the old run aside (``.<name>.plugtrain-old-<pid>``), never deleted:
  the next start refuses and says how to move it back.
* ``--resume auto`` starts from scratch only where nothing is lost: no directory, an empty one, or an elastic restart
  before the first checkpoint of the same torchrun job; a directory with files but no ``last.pt`` is refused.
* A fresh directory appears whole (one rename) or not at all: nothing is half-written before the run is known to
  start.
* Every file a component writes stays inside the run directory: :func:`run_path` and the :data:`RunPath` annotation.

A check of a queue of specs (``plugtrain check A B``) knows, per spec, the run directories of the specs before it
(:func:`queued_before`, :func:`written_by_queue`), so that a later stage may name a file an earlier one writes; a
finished run's spec is reopened without the files only the start of its training read (:func:`without_start_inputs`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

import attrs

from plugtrain.core.errors import PlugtrainError
from plugtrain.core.runtime.checkpoint import fsync_dir

CHECKPOINTS = "checkpoints"
#: Files whose presence marks a directory as a plugtrain run directory (only those are ever deleted by --overwrite).
MARKERS = ("spec.toml", "env.json", CHECKPOINTS)
#: The longest file name (one path component, in bytes) that common filesystems take.
NAME_MAX = 255


# -- paths inside the run directory --------------------------------------------------------------------------------
@attrs.frozen
class InsideRunDir:
    """Annotation marker: the parameter names a file or folder *inside* the run directory (see :data:`RunPath`)."""

    what: str = "this path inside the run directory"


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


# -- the queue a check stands for ------------------------------------------------------------------------------------
#: The run directories of the specs queued before the one being checked (``plugtrain check A B``, as ``plugtrain
#: train A B`` would run them): a file inside one of them will exist when the later spec's turn comes.
_QUEUED: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("plugtrain_queued_runs", default=())


@contextlib.contextmanager
def queued_before(run_dirs: Sequence[Path]) -> Iterator[None]:
    """Within this block, :func:`written_by_queue` knows the run directories ``run_dirs`` (of the earlier specs)."""
    token = _QUEUED.set(tuple(Path(d).resolve() for d in run_dirs))
    try:
        yield
    finally:
        _QUEUED.reset(token)


def written_by_queue(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies inside the run directory of a spec queued before the one being checked: a plugin's
    check of a file a spec reads (a ``pretrained`` checkpoint of an earlier stage) accepts it as not there yet."""
    try:
        full = Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()
    except (OSError, ValueError):
        return False
    return any(d == full or d in full.parents for d in _QUEUED.get())


#: False inside :func:`without_start_inputs`.
_START_INPUTS: contextvars.ContextVar[bool] = contextvars.ContextVar("plugtrain_start_inputs", default=True)


@contextlib.contextmanager
def without_start_inputs() -> Iterator[None]:
    """Within this block specs are checked without the files only the start of training reads (its ``pretrained``
    weights, local or on the hub): a finished run is reopened (evaluate, predict, export: its weights come from its
    checkpoints), or ``plugtrain weights fetch`` is about to look the weights up itself."""
    token = _START_INPUTS.set(False)
    try:
        yield
    finally:
        _START_INPUTS.reset(token)


def start_inputs_needed() -> bool:
    """Whether a plugin's check must find the files only the start of training reads (see
    :func:`without_start_inputs`)."""
    return _START_INPUTS.get()


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
    """What to do with the run directory: ``new``, ``overwrite`` (replace it) or ``resume`` (from ``checkpoint``).

    ``fresh``: this start creates the directory (``new``, ``overwrite``, and ``--resume PATH`` into a directory that
    does not exist yet), so it is built under a temporary sibling name and put in place whole (:class:`Opening`)."""

    run_dir: Path
    mode: str
    checkpoint: Path | None = None
    note: str | None = None
    fresh: bool = True
    replace: bool = False  # a fresh directory that takes the place of an existing one (kept until the start is done)


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in MARKERS)


def _sibling(run_dir: Path, what: str, pid: int | None = None) -> Path:
    return run_dir.parent / f".{run_dir.name}.plugtrain-{what}-{os.getpid() if pid is None else pid}"


_SIBLING = re.compile(r"^\.(?P<name>.+)\.plugtrain-(?P<what>new|old)-(?P<pid>\d+)$")


def _leftovers(run_dir: Path) -> list[tuple[Path, str, int]]:
    """``(path, "new" | "old", pid)`` of the siblings that starts of ``run_dir`` by processes now gone left."""
    out = []
    try:
        entries = list(run_dir.parent.iterdir()) if run_dir.parent.is_dir() else []
    except OSError:
        return out
    for p in entries:
        m = _SIBLING.match(p.name)
        if m and m.group("name") == run_dir.name and int(m.group("pid")) != os.getpid() and not _alive(int(m.group("pid"))):
            out.append((p, m.group("what"), int(m.group("pid"))))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _file_in_the_way(run_dir: Path) -> Path | None:
    for candidate in (run_dir, *run_dir.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            return None
    return None


def _contents(run_dir: Path) -> str:
    names = sorted(p.name for p in run_dir.iterdir())
    ckpts = sorted(p.name for p in (run_dir / CHECKPOINTS).glob("*.pt")) if (run_dir / CHECKPOINTS).is_dir() else []
    shown = [*(f"{CHECKPOINTS}/{c}" for c in ckpts), *(n for n in names if n != CHECKPOINTS)]
    return ", ".join(shown[:6]) + (", ..." if len(shown) > 6 else "")


def _only_this_run(run_dir: Path) -> bool:
    """An elastic restart before the first checkpoint: the directory holds nothing but what an earlier start of
    this same torchrun job wrote (its env.json names the job; no checkpoint, no metrics row yet)."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    try:
        env = json.loads((run_dir / "env.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not job or not isinstance(env, dict) or env.get("torchelastic_run_id") != job:
        return False
    if env.get("torchelastic_agent") != elastic_agent():  # the same job id ("none" by default) is not enough
        return False
    ckpt_dir = run_dir / CHECKPOINTS
    written = [p for p in ckpt_dir.iterdir() if not p.name.startswith(".")] if ckpt_dir.is_dir() else []
    return not written and not (run_dir / "metrics.csv").exists()


def elastic_agent() -> str | None:
    """Under torchrun, the agent that started this worker (``host:pid``): it stays the same across the restarts of
    one job on a node, and differs for another job even when both use the default rendezvous id."""
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return None
    return f"{socket.gethostname()}:{os.getppid()}"


def plan(run_dir: Path, resume: str | None, overwrite: bool, elastic_restart: bool = False) -> Plan:
    """Decide, before anything is written, how this invocation treats ``run_dir``.

    Nothing a start can lose is ever removed here: ``--resume auto`` starts from scratch only where nothing would
    be lost (no directory, an empty one, or an elastic restart before the job's first checkpoint), and
    ``--overwrite`` replaces an old run only once the new one has started (:class:`Opening`)."""
    if resume and overwrite:
        raise PlugtrainError("--resume and --overwrite exclude each other")
    blocker = _file_in_the_way(run_dir)
    if blocker is not None:
        what = "the run directory" if blocker == run_dir else "run.output_dir (or a folder above it)"
        raise PlugtrainError(f"{what} {blocker} exists and is a file, not a directory: no run directory can be made "
                             "there; choose another run.output_dir")
    for leftover, what, pid in _leftovers(run_dir):
        if what == "old":
            raise PlugtrainError(
                f"{leftover} holds the run that an interrupted --overwrite (process {pid}) was replacing; nothing "
                f"was deleted. Move it back (mv {leftover} {run_dir}) or remove it, then start again")
    exists = run_dir.is_dir() and any(run_dir.iterdir())
    if resume == "auto":
        last = run_dir / CHECKPOINTS / "last.pt"
        if last.is_file():
            return Plan(run_dir, "resume", last, fresh=False)
        if not exists:
            return Plan(run_dir, "new", note=f"nothing to resume in {run_dir}; starting from scratch")
        if elastic_restart and _only_this_run(run_dir):
            return Plan(run_dir, "overwrite", replace=True, note=f"elastic restart before the first checkpoint of "
                                                                 f"{run_dir}: starting again from scratch")
        others = sorted((run_dir / CHECKPOINTS).glob("*.pt")) if (run_dir / CHECKPOINTS).is_dir() else []
        best = next((c for c in others if c.name == "best.pt"), others[-1] if others else None)
        other = f", --resume {best} to continue from another of its checkpoints" if best is not None else ""
        raise PlugtrainError(
            f"--resume auto: {run_dir} holds a run ({_contents(run_dir)}) but no {CHECKPOINTS}/last.pt, so there "
            "is nothing to continue, and starting from scratch would replace it. Pass --overwrite instead to start "
            f"it again (the old files are replaced only once the new run has started){other}, or choose another "
            "run.name")
    if resume:
        ckpt = Path(resume)
        if not ckpt.is_file():
            raise PlugtrainError(f"--resume {resume}: no such checkpoint file (use --resume auto for the run's last.pt)")
        if exists:
            try:
                inside = run_dir.resolve() in ckpt.resolve().parents
            except OSError:
                inside = False
            if not inside and elastic_restart and _only_this_run(run_dir):
                return Plan(run_dir, "resume", ckpt, replace=True, note=f"elastic restart before the first "
                                                                       f"checkpoint of {run_dir}: again from {ckpt}")
            if not inside:
                raise PlugtrainError(
                    f"--resume {resume}: the run directory {run_dir} already holds another run "
                    f"({_contents(run_dir)}); continuing there would write over its checkpoints. Choose another "
                    "run.name (e.g. --set run.name=\"...\") for the continued run")
            return Plan(run_dir, "resume", ckpt, fresh=False)
        return Plan(run_dir, "resume", ckpt)
    if exists:
        if not overwrite:
            raise PlugtrainError(
                f"run directory {run_dir} already exists: pass --resume auto to continue it, --overwrite to replace "
                "it, or choose another run.name"
            )
        _check_replaceable(run_dir, "--overwrite")
        return Plan(run_dir, "overwrite", replace=True)
    return Plan(run_dir, "new")


def _check_replaceable(run_dir: Path, flag: str) -> None:
    if not is_run_dir(run_dir):
        raise PlugtrainError(f"{flag}: refusing to delete {run_dir}: it is not a plugtrain run directory "
                             f"(none of {', '.join(MARKERS)} in it)")


class Opening:
    """Rank 0's file work when a run starts; nothing of an old run is lost at any moment.

    A fresh run directory (``new``, ``overwrite``, a resume into a new directory) is written under a temporary
    sibling name, ``.<name>.plugtrain-new-<pid>`` (:attr:`where`), and put in place whole by :meth:`publish`, one
    rename; for ``overwrite`` the old run is first renamed aside to ``.<name>.plugtrain-old-<pid>``, still intact.
    :meth:`commit` (once everything before training has passed, loggers included) deletes the old run;
    :meth:`rollback` (on any failure before that) removes what this start wrote and renames the old run back. A
    resume in place writes into the run directory itself (``spec.toml`` and ``env.json``, each atomically)."""

    def __init__(self, p: Plan) -> None:
        self.plan = p
        self.run_dir = p.run_dir
        self.staged = p.fresh
        self.published = False
        self.backup: Path | None = None
        self.created: list[Path] = []  # folders above the run directory that this start made
        for leftover, what, _ in _leftovers(p.run_dir):
            if what == "new":  # a start that died before its directory was put in place: only its own files
                shutil.rmtree(leftover, ignore_errors=True)
        parent = p.run_dir.parent
        missing = [d for d in (parent, *parent.parents) if not d.exists()]
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlugtrainError(f"cannot create the folder {parent} for the run directory: "
                                 f"{exc.strerror or exc}") from None
        self.created = missing
        self.where = _sibling(p.run_dir, "new") if self.staged else p.run_dir
        #: a resume in place rewrites these two: what they held before, to put back on a failure
        self.kept = {} if self.staged else {name: _read_bytes(p.run_dir / name) for name in ("spec.toml", "env.json")}
        try:
            (self.where / CHECKPOINTS).mkdir(parents=True, exist_ok=not self.staged)
        except OSError as exc:
            self._remove_created()
            raise PlugtrainError(f"cannot create the run directory {p.run_dir}: {exc.strerror or exc}") from None

    def publish(self) -> None:
        """Put the staged directory in place (the old run, for ``overwrite``, moved aside first)."""
        if not self.staged or self.published:
            return
        if self.plan.replace and self.run_dir.exists():
            self.backup = _sibling(self.run_dir, "old")
            os.rename(self.run_dir, self.backup)
        try:
            os.rename(self.where, self.run_dir)  # onto nothing, or onto an empty directory
        except OSError as exc:
            if self.backup is not None:
                os.rename(self.backup, self.run_dir)
                self.backup = None
            raise PlugtrainError(f"cannot put the run directory {self.run_dir} in place: {exc.strerror or exc} "
                                 "(did another process create it meanwhile?)") from None
        self.published = True
        fsync_dir(self.run_dir.parent)

    def commit(self) -> None:
        """The new run has started: the old one (``overwrite``) is deleted now."""
        if self.backup is not None:
            shutil.rmtree(self.backup, ignore_errors=True)
            self.backup = None

    def rollback(self) -> None:
        """A failure before training: remove what this start wrote, put the old run back where it was."""
        for name, data in self.kept.items():  # a resume in place: spec.toml and env.json as they were
            path = self.run_dir / name
            if data is None:
                path.unlink(missing_ok=True)
            else:
                tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        if self.staged:
            target = self.run_dir if self.published else self.where
            shutil.rmtree(target, ignore_errors=True)
            if self.backup is not None:
                os.rename(self.backup, self.run_dir)
                self.backup = None
            self._remove_created()

    def _remove_created(self) -> None:
        for d in self.created:  # deepest first; only the empty ones
            try:
                d.rmdir()
            except OSError:
                break


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


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
        "torchelastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
        "torchelastic_agent": elastic_agent(),
        "torchelastic_restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0),
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
