"""A SLURM job of plugtrain: its options (flags or the ``[slurm]`` table of a launch file), checked without a
cluster, and the sbatch script it becomes."""

from __future__ import annotations

import re
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import tomllib

from plugtrain.core.errors import PlugtrainError, did_you_mean
from plugtrain.slurm.budget import Estimate, check

#: What the warning signal is when none is given: SIGUSR1, 90 seconds before the time limit.
DEFAULT_SIGNAL = "USR1@90"
#: How many times a job may requeue itself in all, and how often in a row at the same step.
DEFAULT_MAX_REQUEUES = 20
STALL_LIMIT = 3


@attrs.frozen
class JobOptions:
    """What ``plugtrain submit`` asks SLURM for. ``time`` is SLURM's time format; ``signal`` is ``NAME@SECONDS``
    (sent to every task that long before the time limit); ``sbatch`` are further ``--option=value`` lines kept as
    given; ``setup`` are shell lines run before the tasks start (``module load ...``, ``source venv/bin/activate``)."""

    time: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal: str = DEFAULT_SIGNAL
    max_requeues: int = DEFAULT_MAX_REQUEUES
    job_name: str | None = None
    sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()

    @property
    def ntasks_per_node(self) -> int:
        """One task per GPU (one on a CPU-only node unless ``tasks_per_node`` says otherwise)."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def seconds(self) -> int:
        return parse_time(self.time or "", "--time")

    @property
    def warning(self) -> tuple[signal.Signals, int]:
        return parse_signal(self.signal)


_INT_KEYS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "max_requeues")
_STR_KEYS = ("time", "mem", "partition", "account", "qos", "signal", "job_name")
_LIST_KEYS = ("sbatch", "setup")
KEYS = _INT_KEYS + _STR_KEYS + _LIST_KEYS


def parse_time(text: str, what: str = "--time") -> int:
    """SLURM's time limit formats (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in
    seconds."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", text or "")
    if not m:
        raise PlugtrainError(f"{what} {text!r}: expected a SLURM time limit such as 04:00:00, 90 (minutes) or "
                             "1-12:00:00")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is None:  # MM, MM:SS, HH:MM:SS
        seconds = a * 60 if b is None else (a * 60 + b if c is None else a * 3600 + b * 60 + c)
    else:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise PlugtrainError(f"{what} {text!r}: the time limit must be positive")
    return seconds


def parse_signal(text: str, what: str = "--signal") -> tuple[signal.Signals, int]:
    """``NAME@SECONDS`` (``USR1@90``, ``SIGTERM@120``; SECONDS defaults to 60 as in sbatch) -> (signal, seconds)."""
    m = re.fullmatch(r"\s*(?:SIG)?([A-Za-z0-9]+)(?:@(\d+))?\s*", text or "", flags=re.IGNORECASE)
    usable = ("USR1", "USR2", "TERM", "INT", "HUP", "URG")
    name = m.group(1).upper() if m else ""
    if not m or name not in usable:
        hint = did_you_mean(name, usable) if m else ""
        raise PlugtrainError(f"{what} {text!r}: expected NAME@SECONDS with NAME one of {', '.join(usable)} "
                             f"(e.g. USR1@90: SIGUSR1 90 s before the time limit).{hint}")
    seconds = int(m.group(2)) if m.group(2) is not None else 60
    if not 1 <= seconds <= 65535:
        raise PlugtrainError(f"{what} {text!r}: the warning time must be 1 to 65535 seconds")
    return signal.Signals[f"SIG{name}"], seconds


def read_launch_file(path: str) -> dict[str, Any]:
    """The ``[slurm]`` table of a launch file, checked key by key (file:line:col and a did-you-mean on a bad key)."""
    from plugtrain.core.spec.tomlpos import locate

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlugtrainError(f"--launch {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlugtrainError(f"{path}: not valid TOML: {exc}") from None
    pos = locate(text)

    def at(*key: str) -> str:
        where = pos.get(tuple(key)) or pos.get(tuple(key[:1]))
        return f"{path}:{where.line}:{where.col}" if where else path

    extra = [k for k in data if k != "slurm"]
    if extra:
        raise PlugtrainError(f"{at(extra[0])}: unknown table or key {extra[0]!r}: a launch file holds one [slurm] "
                             "table (the run spec stays as it is)")
    table = data.get("slurm")
    if not isinstance(table, dict):
        raise PlugtrainError(f"{path}: no [slurm] table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        where = at("slurm", key)
        if key not in KEYS:
            raise PlugtrainError(f"{where}: unknown key {key!r} in [slurm].{did_you_mean(key, KEYS)} Accepted: "
                                 f"{', '.join(KEYS)}")
        if key in _INT_KEYS and (not isinstance(value, int) or isinstance(value, bool)):
            raise PlugtrainError(f"{where}: slurm.{key} = {value!r}: expected an integer")
        if key in _STR_KEYS and not isinstance(value, str):
            raise PlugtrainError(f"{where}: slurm.{key} = {value!r}: expected a string"
                                 + (' such as "04:00:00"' if key == "time" else ""))
        if key in _LIST_KEYS and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise PlugtrainError(f"{where}: slurm.{key}: expected a list of strings")
        out[key] = tuple(value) if key in _LIST_KEYS else value
    return out


def options(launch: str | None = None, **flags: Any) -> JobOptions:
    """The job's options: the launch file's ``[slurm]`` table, then the flags given (not ``None``) over it; checked
    as far as possible without a cluster."""
    values: dict[str, Any] = read_launch_file(launch) if launch else {}
    for key, value in flags.items():
        if value is not None and value != ():
            values[key] = tuple(value) if key in _LIST_KEYS else value
    opts = JobOptions(**values)
    if opts.time is None:
        raise PlugtrainError("give the job's time limit: --time HH:MM:SS (or time = \"HH:MM:SS\" in the launch "
                             "file's [slurm] table)")
    for key in _INT_KEYS:
        value = getattr(opts, key)
        low = 0 if key in ("gpus_per_node", "max_requeues") else 1
        if value is not None and value < low:
            raise PlugtrainError(f"--{key.replace('_', '-')} {value}: must be at least {low}")
    check_budget(opts)  # a warning at or before the start; a run's measured history is checked by ``submit``
    for line in opts.sbatch:
        if not line.startswith("--"):
            raise PlugtrainError(f"slurm.sbatch {line!r}: expected a long sbatch option such as --constraint=a100")
    return opts


def check_budget(opts: JobOptions, estimate: Estimate | None = None) -> list[str]:
    """Refuse a time limit whose starts cannot reach a step boundary and write ``last.pt`` before the warning (with
    ``estimate``, the run's measured startup and step time); returns the lines that say the estimate used."""
    _, lead = opts.warning
    return check(opts.seconds, lead, opts.time or "", opts.signal, estimate or Estimate())


def script(opts: JobOptions, spec: Path, overrides: Sequence[str], *, name: str, log_dir: Path, workdir: Path,
           resume: str | None = None, overwrite: bool = False, python: str | None = None,
           command: Sequence[str] | None = None, array: int | None = None, notes: Sequence[str] = ()) -> str:
    """The sbatch script: ``#SBATCH`` lines, the rendezvous address from the job's first node, and one ``srun``
    task per GPU running :mod:`plugtrain.slurm.worker`; or, with ``command`` and ``array`` (a sweep), an array job
    of ``array`` tasks each running ``command`` (a sweep worker), requeued when the time limit or preemption stopped
    it (its trial was queued again in the study)."""
    if command is not None:
        return _array_script(opts, list(command), name=name, log_dir=log_dir, workdir=workdir, array=array or 1)
    sig, lead = opts.warning
    q = shlex.quote
    lines = _header(opts, name)
    lines += [f"#SBATCH --signal={sig.name.removeprefix('SIG')}@{lead}", "#SBATCH --requeue",
              "#SBATCH --open-mode=append", f"#SBATCH --output={log_dir / (name + '-%j.out')}",
              f"#SBATCH --chdir={workdir}"]
    lines += [f"#SBATCH {line}" for line in opts.sbatch]
    worker = [python or sys.executable, "-m", "plugtrain.slurm.worker", "--max-requeues", str(opts.max_requeues)]
    if resume:
        worker += ["--resume", resume]
    if overwrite:
        worker.append("--overwrite")
    worker += ["--", str(spec)]
    for o in overrides:
        worker += ["--set", o]
    lines += [
        "",
        "# Written by `plugtrain submit`. Every task gets the warning signal "
        f"({sig.name}, {lead} s before the time limit) and SIGTERM",
        "# (preemption): the tasks stop at the next step boundary, rank 0 writes last.pt and requeues the job, and the",
        "# requeued job continues from last.pt (SLURM_RESTART_COUNT > 0) up to --max-requeues restarts.",
        *(f"# {note}" for note in notes),
        *opts.setup,
        f"export PLUGTRAIN_STOP_SIGNALS={sig.name.removeprefix('SIG')}",
        "export MASTER_ADDR=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\"",
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "export OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"",
        "echo \"plugtrain: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST\"",
        "",
        "# The batch shell itself may get SIGTERM (preemption): it waits for the tasks, which checkpoint first.",
        f"srun --kill-on-bad-exit=1 {' '.join(q(w) for w in worker)} &",
        "tasks=$!",
        "trap 'echo \"plugtrain: the batch shell got a signal; waiting for the tasks to write last.pt\"' "
        f"TERM {sig.name.removeprefix('SIG')}",
        "while true; do",
        "  rc=0; wait \"$tasks\" || rc=$?",
        "  kill -0 \"$tasks\" 2>/dev/null || break",
        "done",
        "exit \"$rc\"",
        "",
    ]
    return "\n".join(lines)


def _array_script(opts: JobOptions, command: list[str], *, name: str, log_dir: Path, workdir: Path,
                  array: int) -> str:
    """An array job of ``array`` sweep workers on one study: one task each; a worker stopped by the warning signal
    or SIGTERM has queued its trial again (continued from its ``last.pt`` by whichever worker takes it) and the task
    requeues itself, up to ``max_requeues`` times."""
    sig, lead = opts.warning
    short = sig.name.removeprefix("SIG")
    lines = _header(opts, name)
    lines += [f"#SBATCH --array=0-{array - 1}", f"#SBATCH --signal={short}@{lead}", "#SBATCH --requeue",
              "#SBATCH --open-mode=append", f"#SBATCH --output={log_dir / (name + '-%A_%a.out')}",
              f"#SBATCH --chdir={workdir}"]
    lines += [f"#SBATCH {line}" for line in opts.sbatch]
    lines += [
        "",
        f"# Written by `plugtrain sweep --submit`: {array} sweep workers on one study. A worker stopped by {sig.name} "
        f"({lead} s",
        "# before the time limit) or SIGTERM (preemption) queues its trial again and this task requeues itself.",
        *opts.setup,
        f"export PLUGTRAIN_STOP_SIGNALS={short}",
        "export OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"",
        "echo \"plugtrain: sweep worker $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID (restart "
        "${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST\"",
        "",
        f"srun {' '.join(shlex.quote(c) for c in command)} &",
        "tasks=$!",
        f"trap 'echo \"plugtrain: the batch shell got a signal; waiting for the sweep worker\"' TERM {short}",
        "while true; do",
        "  rc=0; wait \"$tasks\" || rc=$?",
        "  kill -0 \"$tasks\" 2>/dev/null || break",
        "done",
        f"if [ \"$rc\" -gt 128 ] && [ \"$rc\" -ne 130 ] && [ \"${{SLURM_RESTART_COUNT:-0}}\" -lt {opts.max_requeues} ]; "
        "then",
        "  echo \"plugtrain: the sweep worker stopped (exit $rc); its trial is queued again; requeueing task "
        "$SLURM_JOB_ID\"",
        "  scontrol requeue \"$SLURM_JOB_ID\" && exit 0",
        "fi",
        "exit \"$rc\"",
        "",
    ]
    return "\n".join(lines)


def _header(opts: JobOptions, name: str) -> list[str]:
    """The ``#SBATCH`` lines of the resources: name, nodes, tasks, GPUs, CPUs, memory, time, partition, account."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={opts.job_name or name}", f"#SBATCH --nodes={opts.nodes}",
             f"#SBATCH --ntasks-per-node={opts.ntasks_per_node}"]
    if opts.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={opts.gpus_per_node}")
    if opts.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={opts.cpus_per_task}")
    if opts.mem:
        lines.append(f"#SBATCH --mem={opts.mem}")
    lines.append(f"#SBATCH --time={opts.time}")
    for key in ("partition", "account", "qos"):
        if getattr(opts, key):
            lines.append(f"#SBATCH --{key}={getattr(opts, key)}")
    return lines
