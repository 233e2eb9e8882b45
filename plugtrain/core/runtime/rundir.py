"""The run directory ``<output_dir>/<run.name>/`` and what goes in it besides checkpoints and logs.

Contract: ``spec.toml`` (the resolved spec it started with; a resume in place never rewrites it, and records a spec
that changed what :data:`RESUME_MAY_CHANGE` allows as ``spec.resume-N.toml``), ``env.json`` (versions, plugins, git revision, world size, host, start
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
* A resume trains what the run directory says: a spec that differs from its checkpoint's in anything but
  :data:`RESUME_MAY_CHANGE` is refused before anything is written (:func:`check_resume_spec`).
* A fresh directory appears whole (one rename) or not at all: nothing is half-written before the run is known to
  start.
* Every file a component writes stays inside the run directory: :func:`run_path` and the :data:`RunPath` annotation.

A check of a queue of specs (``plugtrain check A B``) knows, per spec, the run directories of the specs before it
(:func:`queued_before`), so that a later stage may name a file an earlier one writes; a finished run's spec is
reopened without the files only the start of its training read (:func:`without_start_inputs`). Plugin checks get both
as a :class:`CheckContext` argument (:func:`check_context`), not by reading these variables.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import inspect
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

from plugtrain.core.atomic import fsync_dir, write_atomic
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
    """Whether ``path`` lies inside the run directory of a spec queued before the one being checked (kept for
    plugins written before :class:`CheckContext`; a check reads ``context.written_by_queue``)."""
    return check_context().written_by_queue(path)


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
    :func:`without_start_inputs`; kept for plugins written before :class:`CheckContext`)."""
    return _START_INPUTS.get()


@attrs.frozen
class CheckContext:
    """What a plugin's check (``PLUGTRAIN_VALIDATE`` with a ``context`` parameter) knows beyond the parameters: the
    situation the spec is checked in, which the same parameters may be right in and wrong in another.

    ``queued_runs``: the run directories of the specs queued before this one (``plugtrain check A B``); a file inside
    one will exist when this spec's turn comes (:meth:`written_by_queue`). ``start_inputs_needed``: False where the
    files only the start of training reads (start weights) are not needed: a finished run reopened by
    evaluate/predict/export, or ``plugtrain weights fetch`` about to get them itself. ``spec_dir``: the folder of
    the spec file being checked (absolute; None for a spec given as a dict), for a check that resolves a path
    relative to the spec rather than to the working directory (:meth:`spec_relative`).
    """

    queued_runs: tuple[Path, ...] = ()
    start_inputs_needed: bool = True
    spec_dir: Path | None = None

    def spec_relative(self, path: str | os.PathLike[str]) -> Path:
        """``path`` resolved against :attr:`spec_dir` (absolute and ``~`` paths as they are; the working directory
        when there is no spec file)."""
        given = Path(os.path.expanduser(os.fspath(path)))
        return given if given.is_absolute() else (self.spec_dir or Path.cwd()) / given

    def written_by_queue(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` lies inside the run directory of a spec queued before this one: a check of a file the
        spec reads (a ``pretrained`` checkpoint of an earlier stage) accepts it as not there yet."""
        try:
            full = Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()
        except (OSError, ValueError):
            return False
        return any(d == full or d in full.parents for d in self.queued_runs)


def check_context() -> CheckContext:
    """The :class:`CheckContext` of the check under way (set by :func:`queued_before` and
    :func:`without_start_inputs`; a plain check outside them gets the defaults)."""
    return CheckContext(queued_runs=_QUEUED.get(), start_inputs_needed=_START_INPUTS.get(), spec_dir=_SPEC_DIR.get())


#: The folder of the spec file being checked (inside :func:`checking_spec`).
_SPEC_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("plugtrain_spec_dir", default=None)


@contextlib.contextmanager
def checking_spec(path: str | os.PathLike[str]) -> Iterator[None]:
    """Within this block the spec file ``path`` is being checked: :attr:`CheckContext.spec_dir` is its folder."""
    token = _SPEC_DIR.set(Path(os.path.abspath(os.fspath(path))).parent)
    try:
        yield
    finally:
        _SPEC_DIR.reset(token)


def takes_context(check: Any) -> bool:
    """Whether the plugin check ``check`` accepts a ``context`` keyword (a 4th parameter named ``context``, or
    ``**kwargs``); a three-parameter ``validate(factory, params, defaults)`` is called as before."""
    try:
        params = inspect.signature(check).parameters.values()
    except (TypeError, ValueError):
        return False
    return any((p.name == "context" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               or p.kind is p.VAR_KEYWORD for p in params)


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
            if (run_dir / CHECKPOINTS / "last.pt").is_file():
                raise PlugtrainError(f"run directory {run_dir} already exists: pass --resume auto to continue it, "
                                     "--overwrite to replace it, or choose another run.name")
            others = sorted((run_dir / CHECKPOINTS).glob("*.pt")) if (run_dir / CHECKPOINTS).is_dir() else []
            best = next((c for c in others if c.name == "best.pt"), others[-1] if others else None)
            other = f", --resume {best} to continue from one of its checkpoints" if best is not None else ""
            raise PlugtrainError(
                f"run directory {run_dir} already exists and holds no {CHECKPOINTS}/last.pt to continue "
                f"({_contents(run_dir)}): pass --overwrite to start it again{other}, or choose another run.name")
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

    def write_spec(self, spec_dict: dict[str, Any], changes: dict[str, Any] | None = None) -> str:
        """Record the spec this start trains with; returns the file's name. A fresh directory gets ``spec.toml``. A
        resume in place keeps ``spec.toml`` (what trained the run) and writes a spec that differs from its
        checkpoint's (``changes``, allowed by :func:`check_resume_spec`) to the next ``spec.resume-N.toml``."""
        if self.staged:
            write_spec(self.where, spec_dict)
            return "spec.toml"
        history = spec_history(self.run_dir)
        if not changes:
            return history[-1].name
        name = f"spec.resume-{len(history)}.toml"
        self.kept.setdefault(name, _read_bytes(self.run_dir / name))  # removed again on a rollback
        changed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
        write_spec(self.run_dir, spec_dict, name, f"# The resolved run spec of resume {len(history)} of this run "
                                                 f"(written by plugtrain); changed: {changed}\n")
        return name

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
                write_atomic(path, data)
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


def write_spec(run_dir: Path, spec_dict: dict[str, Any], name: str = "spec.toml",
               header: str = "# The resolved run spec of this run (written by plugtrain).\n") -> None:
    import tomli_w

    _write_text(run_dir / name, header + tomli_w.dumps(spec_dict))


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


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


def environment(world_size: int, spec_source: str | None, backbone: Any = None) -> dict[str, Any]:
    """The env.json record: interpreter, torch and CUDA, every plugin distribution, git, world, host, time, and the
    weights the ``backbone`` started from (``start_weights``: its optional ``plugtrain_start_weights``, see
    :class:`~plugtrain.core.hookspecs.Backbone`; null when it names none)."""
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
        **({"start_weights": start_weights(backbone)} if backbone is not None else {}),
    }


def start_weights(backbone: Any) -> dict[str, Any] | None:
    """The backbone's record of the weights it was built from (``plugtrain_start_weights``), or None."""
    record = getattr(backbone, "plugtrain_start_weights", None)
    return dict(record) if isinstance(record, dict) else None


def record_start_weights(run_dir: Path, backbone: Any) -> dict[str, Any] | None:
    """On a fresh start (rank 0, env.json written, no resume in it), put the ``backbone``'s
    :func:`start_weights` into env.json as ``start_weights`` unless :func:`environment` already did; returns the
    record (None for a resume, or a backbone that names no weights) for the start line."""
    path = Path(run_dir) / "env.json"
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(env, dict) or "resumes" in env or "resumed_from" in env:
        return None
    if "start_weights" not in env:
        env["start_weights"] = start_weights(backbone)
        _write_text(path, json.dumps(env, indent=2, default=str) + "\n")
    return env["start_weights"] if isinstance(env["start_weights"], dict) else None


def write_env(run_dir: Path, env: dict[str, Any], resumed_from: Path | None = None,
              spec_file: str | None = None, changes: dict[str, Any] | None = None) -> None:
    """Write env.json; a resumed run keeps the first record and appends this start to ``resumes``, with the spec
    file it trained with and the spec keys it changed (``{key: [old, new]}``). A resume starts from its checkpoint's
    weights, so its record has no ``start_weights``: the first record's tells where the run began."""
    path = run_dir / "env.json"
    if resumed_from is not None:
        env = {k: v for k, v in env.items() if k != "start_weights"}
        env = {**env, "spec": spec_file, "changed": changes or {}}
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


# -- what a resume may change ------------------------------------------------------------------------------------
#: The spec keys a resume may change (dotted; a key stands for everything below it), and why each is harmless: where
#: the run lives, how long it runs, how it is logged and checkpointed, and how fast (not what) it computes. Every
#: other difference (data, model, loss, optimizer, scheduler, augmentations, mixup, seed, metrics, callbacks,
#: precision, ...) changes what is trained, and is refused (:func:`check_resume_spec`).
RESUME_MAY_CHANGE: dict[str, str] = {
    "run.name": "where the run lives",
    "run.output_dir": "where the run lives",
    "run.epochs": "more epochs only; a scheduler is rebuilt for the new length at the checkpoint's step",
    "run.deterministic": "how the kernels are chosen",
    "data.batch_size": "only at the same global batch (batch_size x processes)",
    "data.val_batch_size": "how validation is batched",
    "data.num_workers": "how the data is loaded",
    "data.persistent_workers": "how the data is loaded",
    "data.prefetch_factor": "how the data is loaded",
    "data.pin_memory": "how the data is loaded",
    "trainer.device": "where it computes",
    "trainer.backend": "how the processes talk",
    "trainer.compile": "how it computes",
    "trainer.channels_last": "how it computes",
    "trainer.log_every_steps": "what is logged",
    "trainer.checkpoint_every_steps": "what is saved",
    "trainer.checkpoint_every_epochs": "what is saved",
    "trainer.keep_top_k": "what is saved",
    "loggers": "what is logged",
    "augmentations.save_samples": "what is logged (on a fresh start only)",
}

_UNSET = object()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A spec dict as ``{dotted key: value}``: tables are walked, arrays are values."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` of every key on which two resolved spec dicts differ (a key only one
    of them sets has the other's value :data:`_UNSET`)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k, _UNSET), b.get(k, _UNSET)) for k in sorted(a.keys() | b.keys())
            if a.get(k, _UNSET) != b.get(k, _UNSET)}


def _show(value: Any) -> str:
    if value is _UNSET:
        return "(not set)"
    if isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, default=str, separators=(", ", ": "))
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed_key(key: str) -> str | None:
    return next((k for k in RESUME_MAY_CHANGE if key == k or key.startswith(k + ".")), None)


def resume_refusals(changes: dict[str, tuple[Any, Any]], new: dict[str, Any], old_global_batch: int | None,
                    world_size: int) -> list[str]:
    """The lines ``key: old -> new`` (with the reason where an allowed key is used wrongly) of ``changes`` that a
    resume may not make; empty when the resume may go on."""
    refused = []
    for key, (was, now) in changes.items():
        line = f"{key}: {_show(was)} -> {_show(now)}"
        allowed = _allowed_key(key)
        if allowed is None:
            refused.append(line)
        elif key == "run.epochs":
            trainer = new.get("trainer") or {}
            if not isinstance(was, int) or not isinstance(now, int) or now < was:
                refused.append(f"{line} (a resume may add epochs, not remove them)")
            elif trainer.get("swa") and trainer.get("swa_start_epoch") is None:
                refused.append(f"{line} (trainer.swa without trainer.swa_start_epoch averages the last quarter of "
                               "run.epochs: the averaging would change)")
        elif key == "data.batch_size":
            now_global = now * world_size if isinstance(now, int) else None
            if old_global_batch is None or now_global != old_global_batch:
                before = f"{old_global_batch}" if old_global_batch else "unknown"
                refused.append(f"{line} (the global batch, batch_size x processes, would be {now_global}, was "
                               f"{before})")
    return refused


def check_resume_spec(p: Plan, state: dict[str, Any], new: dict[str, Any], world_size: int,
                      flag: str = "--resume auto") -> dict[str, Any]:
    """Refuse (:class:`PlugtrainError`, exit 2, before anything is written) a resume whose spec differs from the one
    that trained the checkpoint (its ``meta.spec``) in anything :data:`RESUME_MAY_CHANGE` does not allow, listing every
    difference as ``key: old -> new``. Returns the allowed changes as ``{key: [old, new]}`` (to record)."""
    meta = state.get("meta") or {}
    old = meta.get("spec")
    if not isinstance(old, dict):
        return {}
    changes = spec_changes(old, new)
    if changes.get("loss.weight", (None, None))[1] == "balanced" and isinstance(old.get("loss", {}).get("weight"),
                                                                                 list):
        del changes["loss.weight"]  # the numbers "balanced" resolved to when the run started (the build recomputes)
    sampler = state.get("sampler") or {}
    try:
        old_global = int(sampler["batch_size"]) * int(sampler["world_size"])
    except (KeyError, TypeError, ValueError):
        old_global = None
    refused = resume_refusals(changes, new, old_global, world_size)
    if refused:
        where = f"{p.run_dir}" if not p.fresh else f"{p.checkpoint}"
        if p.fresh:
            how = ("To train with these settings, start a new run without --resume (its weights can start from a "
                   "file with [backbone] pretrained); to continue the checkpoint, resume with the spec that trained it")
        else:
            how = (f"To train with these settings, start a new run: --set run.name=\"...\" (or start this one again "
                   f"from scratch with --overwrite); to continue it, resume with the spec that trained it "
                   f"({latest_spec(p.run_dir)})")
        may = ", ".join(RESUME_MAY_CHANGE)
        raise PlugtrainError(
            f"{flag}: the spec differs from the one that trained {where} in what a resume cannot change:\n  "
            + "\n  ".join(refused) + f"\nA resume continues the same training; it may change only {may}. {how}.")
    return {k: [None if v is _UNSET else v for v in pair] for k, pair in changes.items()}


_RESUME_SPEC = re.compile(r"^spec\.resume-(\d+)\.toml$")


def spec_history(run_dir: Path) -> list[Path]:
    """``spec.toml`` and then the ``spec.resume-N.toml`` files in order: the specs that trained the run."""
    found = []
    with contextlib.suppress(OSError):
        found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := _RESUME_SPEC.match(p.name)))
    return [run_dir / "spec.toml", *(p for _, p in found)]


def latest_spec(run_dir: Path) -> Path:
    """The spec file of the run's latest start (``spec.toml``, or its newest ``spec.resume-N.toml``)."""
    return spec_history(run_dir)[-1]
