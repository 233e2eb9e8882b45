"""The built-in plugin of the sweeps' own commands: ``plugtrain sweep SWEEP_FILE [--trials N] [--storage URL]
[--set K=V] [--check] [--submit ...]`` and ``plugtrain sweep status SWEEP_DIR [--storage URL] [--json]``:
hyperparameter sweeps on Optuna.

The command comes in through the ``plugtrain_commands`` hook (entry point ``sweep`` in ``pyproject.toml``), as a
third-party plugin's would: the command line names no sweep, and ``plugtrain --help`` lists it with its plugin.

The sweep file (:mod:`plugtrain.sweep.space`) names a run spec and holds the search space, the objective, the
sampler and the pruner. Before any trial, the run spec and every choice and both ends of every range are checked
like any spec (``--check`` stops there); then this process is one worker of the study
(:mod:`plugtrain.sweep.study`): start as many as there are GPUs (``CUDA_VISIBLE_DEVICES``) or machines (one
``--storage`` database URL). Optuna is imported here only, never by ``plugtrain list`` or the core.

``plugtrain sweep SWEEP_FILE --submit --array K --time HH:MM:SS [...]`` runs K workers as a SLURM array job on
one study, with ``plugtrain submit``'s job options, checks and script (``--dry-run`` prints it); its storage defaults
to Optuna's journal file ``<sweep_dir>/study.journal`` (a shared file system, no database server), with heartbeats
so that a dead worker's trial is retried as with a database.

Exit codes: 0 the study is done (or the check passed, or ``--submit`` submitted the workers); 2 a bad sweep file, spec or storage URL, a sweep that differs
from the study it would continue, or more folds than the smallest class has samples (all before anything is written);
128 + signal number for a worker stopped by SIGTERM / SIGINT (its trial is queued again; run the same command to
continue).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugtrain import Command, hookimpl
from plugtrain.core.errors import PlugtrainError

#: The storage URL when --storage is not given (keeps a database password off the command line).
STORAGE_ENV = "PLUGTRAIN_SWEEP_STORAGE"


def run(sweep_file: str, overrides: Sequence[str] = (), *, trials: int | None = None, storage: str | None = None,
        check: bool = False, submit: bool = False, array: int | None = None, dry_run: bool = False,
        launch: str | None = None, **flags: Any) -> int:
    from plugtrain.sweep import space, study

    if not submit and (array is not None or dry_run or launch or any(v is not None for v in flags.values())):
        given = "--array" if array is not None else "--dry-run" if dry_run else "--launch" if launch else \
            "--" + next(k for k, v in flags.items() if v is not None).replace("_", "-")
        raise PlugtrainError(f"plugtrain sweep: {given} is an option of --submit (run the workers as a SLURM array "
                             "job): add --submit")

    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise PlugtrainError("plugtrain sweep runs one worker per process: start one per GPU with "
                             "CUDA_VISIBLE_DEVICES=<i> instead of under torchrun")
    sw = space.read(sweep_file)
    base_spec = space.check(sw, list(overrides))
    if check:
        study.check_only(sw, base_spec)
        return 0
    total = trials if trials is not None else sw.trials
    if total is None:
        raise PlugtrainError(f"{sweep_file}: how many trials? give --trials N or [sweep] trials = N (the study's "
                             "total over all workers)")
    if total < 1:
        raise PlugtrainError(f"--trials {total}: give at least 1")
    study.import_optuna()
    url = storage or os.environ.get(STORAGE_ENV) or None
    if url is not None:  # before anything is written or retried
        study.check_storage_url(url, "--storage" if storage else STORAGE_ENV)
    if submit:
        return submit_array(sw, base_spec, list(overrides), total, url, array=array, dry_run=dry_run, launch=launch,
                            url_from_env=url is not None and storage is None, **flags)
    worker = study.Worker(sw, base_spec, list(overrides), total, url)
    return worker.run()


def submit_array(sw: Any, base_spec: Any, overrides: list[str], total: int, url: str | None, *, array: int | None,
                 dry_run: bool, launch: str | None, url_from_env: bool = False, **flags: Any) -> int:
    """``--submit``: the sweep's workers as a SLURM array job of ``array`` tasks on one study, through ``plugtrain
    submit``'s options, checks and script. The study's storage defaults to Optuna's journal file in the sweep
    directory (a shared file system, no database server); each task runs this command without ``--submit``."""
    import shlex
    import sys

    from plugtrain.commands import submit as submit_command
    from plugtrain.core import console
    from plugtrain.slurm import job
    from plugtrain.sweep import study

    if array is None or array < 1:
        raise PlugtrainError(f"--array {array}: give the number of sweep workers, at least 1" if array is not None
                             else "plugtrain sweep --submit: how many workers? give --array K (K array tasks, one "
                                  "worker each, on one study)")
    opts = job.options(launch, **flags)
    if opts.nodes != 1 or opts.ntasks_per_node != 1 or opts.gpus_per_node > 1:
        raise PlugtrainError(f"plugtrain sweep --submit: each array task is one sweep worker on one node with at most "
                             f"one GPU (got --nodes {opts.nodes}, {opts.ntasks_per_node} task(s) per node, "
                             f"--gpus-per-node {opts.gpus_per_node}); ask for more workers with --array K")
    worker = study.Worker(sw, base_spec, overrides, total, url or study.journal_storage(
        Path(base_spec.run.output_dir) / sw.name))
    worker.check_rerun()  # a sweep that differs from the study it would continue: refused before submission
    command = [sys.executable, "-m", "plugtrain", "sweep", str(sw.path.resolve()), "--trials", str(total)]
    if not url_from_env:  # a URL from the environment stays there (sbatch passes it on), off the script
        command += ["--storage", worker.storage_url]
    for o in overrides:
        command += ["--set", o]
    log_dir = worker.sweep_dir.parent.resolve() / "slurm-logs"
    name = f"sweep-{sw.name}".replace("/", "-")
    text = job.script(opts, sw.path.resolve(), overrides, name=name, log_dir=log_dir, workdir=Path(os.getcwd()),
                      command=command, array=array)
    job_id = submit_command.dispatch(opts, text, dry_run, log_dir)
    if job_id is None:
        return 0
    console.echo(f"submitted array job {job_id}: {array} sweep worker(s) on study {study.masked(worker.storage_url)}"
                 f"\n  sweep dir {worker.sweep_dir.resolve()}\n  follow: tail -f {log_dir / (name + f'-{job_id}_*.out')}"
                 f"   (squeue -j {job_id}; plugtrain sweep status {shlex.quote(str(worker.sweep_dir))})\n"
                 f"  cancel: scancel {job_id}   (submit the same command again to continue the study)")
    return 0


def status(sweep_dir: str, *, storage: str | None = None, as_json: bool = False) -> int:
    """The trial table, best first; best.toml and the plots are written again from the study."""
    from plugtrain.sweep import results, study

    where = Path(sweep_dir)
    meta = results.read_meta(where)
    url = storage or os.environ.get(STORAGE_ENV) or None
    if url is None:
        if (where / "study.db").is_file():
            url = study.default_storage(where)
        elif (where / "study.journal").is_file():
            url = study.journal_storage(where)
        else:
            url = meta.get("storage") or ""
            if not url or "***" in url:
                raise PlugtrainError(f"{where}: the study's storage {url or '(unknown)'} is not in this directory and "
                                     f"sweep.json does not keep its password: give --storage URL (or set "
                                     f"{STORAGE_ENV})")
    optuna = study.import_optuna()
    study.check_storage_url(url, "--storage" if storage else STORAGE_ENV if os.environ.get(STORAGE_ENV) else
                            f"{where / 'sweep.json'}: storage")
    storage_obj = study.make_storage(url, None, None, 0)
    try:
        st = optuna.load_study(study_name=meta.get("study_name", meta.get("name")), storage=storage_obj)
    except KeyError:
        raise PlugtrainError(f"{where}: no study {meta.get('study_name')!r} in {study.masked(url)}") from None
    results.print_status(st, meta, as_json=as_json)
    if not as_json:
        results.write_all(st, where, meta)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``plugtrain sweep`` (a sweep file, or ``status SWEEP_DIR``)."""
    parser.usage = ("plugtrain sweep SWEEP_FILE [--trials N] [--storage URL] [--set KEY.PATH=VALUE] [--check]"
                    "\n       plugtrain sweep SWEEP_FILE --submit --array K --time HH:MM:SS [SLURM options of "
                    "submit] [--dry-run]"
                    "\n       plugtrain sweep status SWEEP_DIR [--storage URL] [--json]")
    parser.add_argument("target", nargs="+", metavar="SWEEP_FILE | status SWEEP_DIR",
                        help="a sweep file (it names the run spec and holds the search space), or `status SWEEP_DIR`")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="the study's total number of trials, over all workers")
    parser.add_argument("--storage", metavar="URL",
                        help="the Optuna storage (database URL; default sqlite:///<sweep_dir>/study.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a value of the run spec for every trial (TOML value syntax); repeatable")
    parser.add_argument("--check", action="store_true",
                        help="check the sweep file, the spec and every value of the search space, then exit")
    parser.add_argument("--json", action="store_true", help="status: print the trials as JSON")
    parser.add_argument("--submit", action="store_true",
                        help="run the workers as a SLURM array job (storage: journal:///<sweep_dir>/study.journal)")
    parser.add_argument("--array", type=int, metavar="K", help="--submit: K array tasks, one sweep worker each")
    parser.add_argument("--dry-run", action="store_true", help="--submit: print the sbatch script, submit nothing")
    from plugtrain.commands.submit import add_job_arguments

    add_job_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """``plugtrain sweep``: ``status SWEEP_DIR``, or run a worker of the sweep file."""
    if args.target[0] == "status":
        if len(args.target) != 2:
            raise PlugtrainError("plugtrain sweep status: give one SWEEP_DIR")
        return status(args.target[1], storage=args.storage, as_json=args.json)
    if len(args.target) != 1:
        raise PlugtrainError("plugtrain sweep: give one SWEEP_FILE (or: status SWEEP_DIR)")
    from plugtrain.commands.submit import FLAGS

    return run(args.target[0], args.overrides, trials=args.trials, storage=args.storage, check=args.check,
               submit=args.submit, array=args.array, dry_run=args.dry_run, launch=args.launch,
               **{k: getattr(args, k) for k in FLAGS})


@hookimpl
def plugtrain_commands() -> list[Command]:
    return [Command("sweep", main, help="a hyperparameter sweep on Optuna (one worker per process); or: sweep "
                    "status DIR", arguments=add_arguments)]
