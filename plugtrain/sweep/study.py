"""A sweep worker: one ``plugtrain sweep`` process taking trials of an Optuna study, one after another, in-process.

* The study lives in an Optuna RDB storage: ``sqlite:///<sweep_dir>/study.db`` by default, any SQLAlchemy URL with
  ``--storage`` (PostgreSQL, MySQL) for workers on several machines. Workers on one study take trials
  asynchronously (``study.optimize``); the number of trials is the study's total (``MaxTrialsCallback``), counted
  over every worker: complete and pruned trials, and failed trials that were not retried.
* A worker does not start a trial when the trials that are done or running elsewhere already fill the total; it
  waits (polling the storage) while the last trials run on other workers, so that if one of those dies its retry is
  taken at once, and stops when the study is done.
* Heartbeats (``RDBStorage(heartbeat_interval=, grace_period=)``): a trial whose worker died (SIGKILL, a lost
  machine) is failed by the next worker that looks, and Optuna's retry callback queues the same parameters again
  (``max_retries`` times). A worker stopped by SIGTERM / SIGINT writes the run's ``last.pt``, fails its trial and
  queues its retry before it exits (128 + signal). Restarting ``plugtrain sweep`` continues the study.
* A rerun continues the study only with the search space, objective, folds and ``[set]`` it began with (kept in
  the study's user attribute ``plugtrain.sweep`` and in ``sweep.json``, with the resolved run spec): any difference
  is refused, every one listed, before a trial or a file is written (a study of an earlier plugtrain without that
  record is compared by its trials' distributions). A storage URL that cannot name a database is refused before
  anything is written; only a well-formed one is retried.
* Each trial is an ordinary run in ``<sweep_dir>/trial-NNNN/`` (or K fold runs in ``trial-NNNN/fold-k/``), with a
  ``trial.json`` (state, parameters, objective, times, worker); a pruned trial's directory is kept and gets a
  ``PRUNED`` file. The objective is reported to Optuna after every epoch (``trial.report(value, epoch)``) by a
  callback given to the trainer, which calls ``trainer.request_stop`` when the pruner says so.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from plugtrain.core import console
from plugtrain.core.atomic import atomic_open
from plugtrain.core.errors import PlugtrainError, debug, first_line
from plugtrain.sweep import results
from plugtrain.sweep.space import Sweep, SweepError, relocate, toml_value
from plugtrain.sweep.strategies import PRUNERS, SAMPLERS


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise PlugtrainError("plugtrain sweep needs Optuna: pip install 'plugtrain[sweep]' (optuna, matplotlib)") \
            from None
    if not debug():
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class TrialError(Exception):
    """A trial that failed (bad sampled spec, NaN loss, out of memory, ...): recorded, and the sweep goes on."""


# -- storage, sampler, pruner ------------------------------------------------------------------------------------------
def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'study.db'}"


#: The scheme of Optuna's journal file storage: one append-only file, safe on a shared (NFS) file system without a
#: database server; the default of a sweep submitted to a cluster (``plugtrain sweep FILE --submit``).
JOURNAL = "journal:///"


def journal_storage(sweep_dir: Path) -> str:
    return f"{JOURNAL}{str(Path(sweep_dir).resolve() / 'study.journal').lstrip('/')}"


def _journal_path(url: str) -> Path:
    return Path("/" + url.removeprefix(JOURNAL).lstrip("/"))


def local_storages(sweep_dir: Path) -> tuple[str, str]:
    """The storages that live in the sweep directory itself (SQLite, journal file)."""
    return default_storage(sweep_dir), journal_storage(sweep_dir)


def check_storage_url(url: str, source: str = "--storage") -> None:
    """Refuse a storage URL that cannot name a database before anything is written or retried: one SQLAlchemy cannot
    parse, an unknown kind of database, an in-memory or unreachable SQLite file. Only a well-formed URL gets the
    connection retries of :func:`make_storage` (a server that is starting, workers racing to create the tables).
    ``journal:///ABSOLUTE/PATH`` names a journal file (its folder must exist or be the sweep directory)."""
    if url.startswith("journal:"):
        if not url.startswith(JOURNAL) or not url.removeprefix(JOURNAL).strip("/"):
            raise PlugtrainError(f"{source} {url}: a journal file storage is journal:///ABSOLUTE/PATH/study.journal")
        return
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    except ImportError:  # Optuna without SQLAlchemy cannot happen; RDBStorage would say so
        return
    shape = ("a database URL is KIND[+DRIVER]://USER[:PASSWORD]@HOST[:PORT]/DATABASE, e.g. "
             "postgresql+psycopg2://user@dbhost/sweeps, or sqlite:////absolute/path/study.db")
    try:
        u = make_url(url)
    except (ArgumentError, ValueError, TypeError) as exc:
        raise PlugtrainError(f"{source} {_hide_password(url)}: not a database URL ({first_line(exc)}): "
                             f"{shape}") from None
    try:
        u.get_dialect()
    except NoSuchModuleError:
        from sqlalchemy import dialects

        kind = u.get_backend_name()
        known = [*dialects.__all__, "postgresql+psycopg2", "mysql+pymysql"]
        from plugtrain.core.errors import did_you_mean

        hint = did_you_mean(kind, known) or (" Did you mean 'postgresql'?" if kind.startswith("postgres") else "")
        raise PlugtrainError(f"{source} {masked(url)}: unknown kind of database {u.drivername!r}.{hint} Known: "
                             f"{', '.join(dialects.__all__)}; {shape}") from None
    except ImportError as exc:
        raise PlugtrainError(f"{source} {masked(url)}: {first_line(exc)} (install the database's driver, e.g. "
                             "psycopg2-binary for PostgreSQL)") from None
    if u.get_backend_name() == "sqlite":
        db = u.database or ""
        if db in ("", ":memory:") or db.startswith("file::memory:"):
            raise PlugtrainError(f"{source} {url}: an in-memory SQLite study ends with its worker and no other worker "
                                 "or `sweep status` can see it: give a file, sqlite:////absolute/path/study.db")
        parent = Path(db).parent
        if not parent.is_dir():
            raise PlugtrainError(f"{source} {url}: the SQLite file's folder {str(parent)!r} does not exist (a "
                                 "relative path after sqlite:/// is relative to the working directory; an absolute "
                                 "one takes four slashes: sqlite:////path/study.db)")


def _hide_password(url: str) -> str:
    """``url`` with anything between ``user:`` and ``@`` hidden (for a URL SQLAlchemy cannot parse)."""
    import re

    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def masked(url: str) -> str:
    """The URL with its password hidden (what sweep.json records)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads (check_storage_url refuses those)
        return _hide_password(url)


def retry_callback(optuna: Any, max_retries: int) -> Any:
    """Optuna's retry callback (the same parameters queued again, ``max_retries`` times), marking the failed trial's
    ``trial.json`` too."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return MarkedRetry(cls(max_retry=max_retries))


class MarkedRetry:
    """Wraps Optuna's retry callback: after queuing the retry, the failed trial's ``trial.json`` (when its run
    directory is on this machine) says FAIL, why, and which trial retries it."""

    def __init__(self, retry: Any, reason: str = "its worker stopped sending heartbeats (killed, or its machine "
                                                 "was lost)") -> None:
        self.retry, self.reason = retry, reason

    def __call__(self, study: Any, frozen: Any) -> None:
        self.retry(study, frozen)
        retried_as = None
        for t in study.get_trials(deepcopy=False):
            history = t.system_attrs.get("retry_history") or []
            if history and history[-1] == frozen.number and t.number != frozen.number:
                retried_as = t.number
        run_dir = frozen.user_attrs.get("run_dir")
        path = Path(run_dir) / "trial.json" if run_dir else None
        if path is None or not path.is_file():
            return
        with contextlib.suppress(OSError, ValueError):
            import json

            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("state") == "RUNNING" or self.reason.startswith("interrupted"):
                record.update(state="FAIL", error=self.reason, retried_as=retried_as,
                              finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
                results.write_json(path, record)


def make_storage(url: str, heartbeat: int | None, grace_period: int | None, max_retries: int) -> Any:
    """An ``RDBStorage`` with heartbeats and the retry callback (none for ``heartbeat=None``: reading only); SQLite
    waits for its lock instead of failing."""
    optuna = import_optuna()
    if url.startswith(JOURNAL):
        return _journal(optuna, _journal_path(url), heartbeat, grace_period, max_retries)
    kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        kwargs = {"heartbeat_interval": heartbeat, "grace_period": grace_period or 2 * heartbeat}
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params \
            else "failed_trial_callback"
        kwargs[key] = retry_callback(optuna, max_retries)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 120}
    last: Exception | None = None
    for attempt in range(5):  # workers that start at once race to create the tables
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
        except ImportError as exc:
            raise PlugtrainError(f"--storage {masked(url)}: {first_line(exc)} (install the database's driver, "
                                 "e.g. psycopg2-binary for PostgreSQL)") from None
        except Exception as exc:  # noqa: BLE001 - sqlalchemy's OperationalError and friends
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise PlugtrainError(f"cannot open the study storage {masked(url)}: {type(last).__name__}: {first_line(last)}")


def _journal(optuna: Any, path: Path, heartbeat: int | None, grace_period: int | None, max_retries: int) -> Any:
    """Optuna's journal file storage with the heartbeats RDBStorage has (Optuna's journal storage has none): each
    running trial's worker stamps ``plugtrain:heartbeat`` (wall clock) every ``heartbeat`` seconds; a RUNNING trial
    whose stamp is older than ``grace_period`` is stale, and :func:`optuna.storages.fail_stale_trials` fails it and
    queues its retry, as with a database. The workers' clocks must agree (NTP on a cluster)."""
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    storages = optuna.storages
    journal = getattr(storages, "journal", None)
    interval = heartbeat
    grace = grace_period or 2 * (heartbeat or 0)
    callback = retry_callback(optuna, max_retries) if heartbeat is not None else None

    class HeartbeatJournal(storages.JournalStorage, BaseHeartbeat):
        def record_heartbeat(self, trial_id: int) -> None:
            with contextlib.suppress(Exception):  # the trial finished meanwhile
                self.set_trial_system_attr(trial_id, "plugtrain:heartbeat", time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            out = []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                beat = t.system_attrs.get("plugtrain:heartbeat")
                if beat is None and t.datetime_start is not None:
                    beat = t.datetime_start.timestamp()
                if beat is not None and now - float(beat) > grace:
                    out.append(t._trial_id)
            return out

        def get_heartbeat_interval(self) -> int | None:
            return interval

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return callback

        def get_failed_trial_callback(self) -> Any:  # Optuna before 4.9
            return callback

    try:
        if journal is not None and hasattr(journal, "JournalFileBackend"):  # Optuna >= 4
            backend = journal.JournalFileBackend(str(path), lock_obj=journal.JournalFileSymlinkLock(str(path)))
        else:  # Optuna 3
            backend = storages.JournalFileStorage(str(path), lock_obj=storages.JournalFileSymlinkLock(str(path)))
        return HeartbeatJournal(backend)
    except OSError as exc:
        raise PlugtrainError(f"cannot open the study journal {path}: {exc.strerror or exc} (its folder must exist "
                             "on a file system every worker sees)") from None


def make_sampler(optuna: Any, sw: Sweep, seed: int | None) -> Any:
    """The sweep's sampler, built by its declaration (:data:`plugtrain.sweep.strategies.SAMPLERS`)."""
    return SAMPLERS[sw.sampler.name].build(optuna, sw.sampler.options, seed=seed,
                                           grid={q.name: q.grid() for q in sw.params})


def make_pruner(optuna: Any, sw: Sweep) -> Any:
    """The sweep's pruner, built by its declaration (:data:`plugtrain.sweep.strategies.PRUNERS`)."""
    return PRUNERS[sw.pruner.name].build(optuna, sw.pruner.options)


# -- the callback given to the trainer ---------------------------------------------------------------------------------
class Reporter:
    """``on_epoch_end``: the objective to Optuna (``trial.report(value, offset + epoch)``); when the pruner says so,
    ``trainer.request_stop``. The last step of the trial (its last epoch of its last fold) is never pruned: the trial
    is complete by then."""

    def __init__(self, trial: Any, metric: str, offset: int = 0, final_step: int | None = None,
                 on_start: Any = None) -> None:
        self.trial, self.metric, self.offset, self.final_step = trial, metric, offset, final_step
        self.on_start = on_start
        self.pruned_at: int | None = None
        self.last: float | None = None

    def on_train_start(self, trainer: Any) -> None:
        if self.on_start is not None:  # the run directory exists now: the trial's record goes in it
            self.on_start()
        for row in trainer.history:  # resumed from an interrupted attempt: its epochs count for this trial
            value = row.get(self.metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.trial.report(float(value), self.offset + int(row["epoch"]))
                self.last = float(value)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        step = self.offset + epoch
        self.trial.report(float(value), step)
        self.last = float(value)
        if step != self.final_step and self.trial.should_prune():
            self.pruned_at = epoch
            trainer.request_stop(f"pruned by the sweep's pruner ({self.metric} = {value:.4g} at epoch {epoch})")


# -- the worker --------------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, sw: Sweep, base_spec: Any, cli_overrides: list[str], trials: int, storage: str | None) -> None:
        self.sw = sw
        self.base_spec = base_spec
        self.cli_overrides = list(cli_overrides)
        self.base = [*sw.fixed_overrides(), *self.cli_overrides]
        self.trials = trials
        self.sweep_dir = Path(base_spec.run.output_dir) / sw.name
        self.storage_url = storage or default_storage(self.sweep_dir)
        self.objective_name = sw.objective or base_spec.primary_metric
        self.mode = sw.mode or (base_spec.mode if not sw.objective else _guess_mode(sw.objective, base_spec))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.tb = results.ObjectiveWriter(self.sweep_dir)
        self.interrupted: Any = None
        self.poll = max(0.5, min(float(sw.heartbeat), 5.0))
        self._carried: tuple[Path, int] | None = None

    # -- set-up ------------------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What a rerun must keep for its trials to belong to the same study: the search space, the objective and
        its direction, the folds and the sweep file's fixed overrides. Kept in the study (shared by every worker) and
        in ``sweep.json``."""
        return {"params": {q.name: q.describe() for q in self.sw.params}, "objective": self.objective_name,
                "mode": self.mode, "folds": self.sw.folds, "set": self.sw.fixed_overrides()}

    def resolved_spec(self) -> dict[str, Any]:
        """The run spec every trial starts from (fixed and command-line overrides applied), as plain JSON values
        without ``run.output_dir`` / ``run.name``: what ``sweep.json`` keeps to tell a changed spec on a rerun."""
        import json

        from plugtrain.core.spec.model import to_dict

        d = json.loads(json.dumps(to_dict(self.base_spec), default=str))
        for key in ("output_dir", "name"):
            d.get("run", {}).pop(key, None)
        return d

    def meta(self) -> dict[str, Any]:
        return {"name": self.sw.name, "sweep_file": str(self.sw.path.resolve()),
                "spec": str(Path(self.sw.spec).resolve()), "overrides": self.base,
                "output_dir": self.base_spec.run.output_dir, "storage": masked(self.storage_url),
                "study_name": self.sw.name, "objective": self.objective_name, "mode": self.mode,
                "trials": self.trials, "folds": self.sw.folds, "sampler": self.sw.sampler.name,
                "pruner": self.sw.pruner.name, "space": self.record(), "resolved_spec": self.resolved_spec()}

    def _write_meta(self, old: dict[str, Any] | None) -> dict[str, Any]:
        meta = self.meta()
        meta["created"] = (old or {}).get("created") or datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        results.write_json(self.sweep_dir / results.SWEEP_JSON, meta)
        return meta

    def _old_meta(self) -> dict[str, Any] | None:
        """The ``sweep.json`` of an earlier run of this sweep directory, if any."""
        return results.read_meta(self.sweep_dir) if (self.sweep_dir / results.SWEEP_JSON).is_file() else None

    def differences(self, old: dict[str, Any], study: Any = None) -> list[str]:
        """How this sweep differs from ``old`` (a :meth:`record`, possibly with ``resolved_spec``), one line each,
        pointing at the sweep file where it can; for a study of an earlier plugtrain without a record, its trials'
        distributions stand for its space (``study``)."""
        out: list[str] = []
        now = self.record()
        where = {q.name: q.where for q in self.sw.params}
        if isinstance(old.get("params"), dict):
            was: dict[str, Any] = old["params"]
            cur: dict[str, Any] = now["params"]
            desc = dict(was)
        else:  # a study without a record: its trials' distributions are its space
            import optuna

            was = _space_of_trials(study) if study is not None else {}
            cur = {q.name: optuna_distribution(optuna, q) for q in self.sw.params} if was else {}
            desc = {k: _describe(d) for k, d in was.items()}
        for name, value in cur.items():
            if name not in was:
                out.append(f"{where[name]}: [params] {name} ({now['params'][name]}) is new: the study has no such "
                           "parameter")
            elif was[name] != value:
                out.append(f"{where[name]}: [params] {name} is {now['params'][name]}; in the study it is "
                           f"{desc[name]}")
        for name in was:
            if name not in cur:
                out.append(f"{self.sw.display}: [params] {name} ({desc[name]}) is gone: the study samples it")
        if "objective" in old and (old.get("objective"), old.get("mode")) != (now["objective"], now["mode"]):
            at = self.sw.where.get("sweep.objective") or self.sw.where.get("sweep.mode") or self.sw.display
            out.append(f"{at}: the objective is {now['objective']} ({now['mode']}); the study's is "
                       f"{old.get('objective')} ({old.get('mode')})")
        if "folds" in old and int(old.get("folds") or 0) != now["folds"]:
            at = self.sw.where.get("sweep.folds", self.sw.display)
            out.append(f"{at}: [sweep] folds is {now['folds']}; the study's trials used {old.get('folds') or 0}")
        if "set" in old and old["set"] != now["set"]:
            gone = [o for o in old["set"] if o not in now["set"]]
            new = [o for o in now["set"] if o not in old["set"]]
            out.append(f"{self.sw.display}: [set] {', '.join(new) or 'nothing'}; the study's: "
                       f"{', '.join(gone) or 'nothing'}")
        if isinstance(old.get("resolved_spec"), dict):
            changed = _changed_keys(old["resolved_spec"], self.resolved_spec())
            if changed:
                shown = "; ".join(f"{k}: {_short(b)} (was {_short(a)})" for k, a, b in changed[:6])
                more = f"; and {len(changed) - 6} more" if len(changed) > 6 else ""
                out.append(f"{self.sw.spec}: the run spec (with its overrides) changed: {shown}{more}")
        return out

    def _refuse(self, diffs: list[str], against: str) -> None:
        if not diffs:
            return
        raise PlugtrainError("\n".join([
            f"plugtrain: error: sweep {self.sw.name}: this sweep differs from the study it would continue "
            f"({against}):", *(f"  {d}" for d in diffs),
            "A rerun continues a study only with the same search space, objective, folds and run spec, so that its "
            "trials compare. For a new study, give the sweep another name ([sweep] name = \"...\": a new study and "
            f"sweep directory), or move {self.sweep_dir} away; to continue this one, put the sweep file back as it "
            "was."]))

    def open_study(self) -> Any:
        optuna = import_optuna()
        storage = make_storage(self.storage_url, self.sw.heartbeat, self.sw.grace_period, self.sw.max_retries)
        direction = "maximize" if self.mode == "max" else "minimize"
        pruner = make_pruner(optuna, self.sw)
        try:
            study = optuna.load_study(storage=storage, study_name=self.sw.name, pruner=pruner,
                                      sampler=optuna.samplers.RandomSampler())
            created = False
        except KeyError:
            try:
                study = optuna.create_study(storage=storage, study_name=self.sw.name, direction=direction,
                                            pruner=pruner, sampler=optuna.samplers.RandomSampler(),
                                            load_if_exists=False)
                created = True
            except optuna.exceptions.DuplicatedStudyError:  # another worker created it just now
                study = optuna.load_study(storage=storage, study_name=self.sw.name, pruner=pruner,
                                          sampler=optuna.samplers.RandomSampler())
                created = False
        if not created:
            recorded = study.user_attrs.get(RECORD_ATTR)
            old = recorded if isinstance(recorded, dict) else {}
            n = len(study.get_trials(deepcopy=False))
            self._refuse(self.differences(old, study),
                         f"{self.sw.name!r} in {masked(self.storage_url)}, {n} trial{'s' if n != 1 else ''}")
            want = optuna.study.StudyDirection.MAXIMIZE if self.mode == "max" else \
                optuna.study.StudyDirection.MINIMIZE
            if study.direction != want:
                self._refuse([f"{self.sw.where.get('sweep.mode', self.sw.display)}: the objective "
                              f"{self.objective_name} is to {direction}; the study's is to "
                              f"{study.direction.name.lower()}"], f"{self.sw.name!r} in {masked(self.storage_url)}")
        if not isinstance(study.user_attrs.get(RECORD_ATTR), dict):
            study.set_user_attr(RECORD_ATTR, self.record())
        seed = None if self.sw.seed is None else self.sw.seed + len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(optuna, self.sw, seed)
        if created:
            for point in self.sw.enqueue:
                study.enqueue_trial(point, skip_if_exists=True)
        return study

    def check_rerun(self) -> dict[str, Any] | None:
        """Refuse a rerun whose sweep differs from the one ``sweep.json`` records (before any trial, and before
        ``--submit`` submits workers); the earlier ``sweep.json``, if any."""
        old = self._old_meta()
        if old is not None:
            recorded = {**(old.get("space") or old), "resolved_spec": old.get("resolved_spec")}
            self._refuse(self.differences(recorded), f"as {self.sweep_dir / results.SWEEP_JSON} records it")
        return old

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        optuna = import_optuna()
        if self.sw.folds:
            from plugtrain.sweep import cv

            cv.check_folds(self.sw.spec, self.base, self.sw.folds)
        old = self.check_rerun()
        local = self.storage_url in local_storages(self.sweep_dir)
        made = local and not self.sweep_dir.exists()
        if local:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)  # the study's SQLite file goes in it
        try:
            study = self.open_study()
        except BaseException:
            if made:  # a sweep that could not start leaves no directory behind
                with contextlib.suppress(OSError):
                    for leftover in ("study.db", "study.journal", "study.journal.lock"):
                        (self.sweep_dir / leftover).unlink(missing_ok=True)
                    self.sweep_dir.rmdir()
            raise
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        meta = self._write_meta(old)
        optuna.storages.fail_stale_trials(study)
        c = results.tally(study.get_trials(deepcopy=False))
        console.echo(f"sweep {self.sw.name}: {c['done']} of {self.trials} trials done, {c['running']} running "
                     f"elsewhere; study {masked(self.storage_url)}; worker {self.worker}; sweep dir {self.sweep_dir}")
        code = 0
        try:
            if self._go_on(study):
                max_trials = optuna.study.MaxTrialsCallback(
                    self.trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
                study.optimize(self.objective, catch=(TrialError,), gc_after_trial=True,
                               callbacks=[self._after_trial, max_trials, self._budget])
        except BaseException as exc:
            from plugtrain.core.errors import Stopped

            if not isinstance(exc, Stopped):
                raise
            code = 128 + exc.signum
            console.echo(f"sweep {self.sw.name}: worker stopped by signal {exc.signum}; its trial was failed and "
                         "queued again: run the same command to continue the study")
        finally:
            self.tb.close()
            from plugtrain.core.runtime import distributed

            distributed.teardown()
        if code == 0:
            c = results.tally(study.get_trials(deepcopy=False))
            if self.sw.sampler.name == "grid" and c["done"] < self.trials:
                n = 1
                for q in self.sw.params:
                    n *= len(q.grid() or [])
                console.echo(f"sweep {self.sw.name}: every point of the grid ({n}) has been tried")
            results.write_all(study, self.sweep_dir, meta)
            results.print_status(study, meta)
        return code

    def _go_on(self, study: Any) -> bool:
        """Whether this worker should start another trial: the trials done plus those running (anywhere) leave room.
        While the last trials run on other workers, wait for them: one that dies is failed and queued again, and
        this worker takes it."""
        import optuna

        said = False
        while True:
            c = results.tally(study.get_trials(deepcopy=False))
            if c["done"] >= self.trials:
                return False
            if c["done"] + c["running"] < self.trials:
                return True
            if not said:
                console.echo(f"sweep {self.sw.name}: {c['done']} of {self.trials} trials done; waiting for the "
                             f"{c['running']} running on other workers")
                said = True
            time.sleep(self.poll)
            optuna.storages.fail_stale_trials(study)

    def _budget(self, study: Any, frozen: Any) -> None:
        if not self._go_on(study):
            study.stop()

    def _after_trial(self, study: Any, frozen: Any) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        c = results.tally(trials)
        what = frozen.state.name.lower()
        if frozen.state == TrialState.COMPLETE:
            self.tb.add(frozen.number, float(frozen.value))
            what += f": {self.objective_name} = {frozen.value:.4g}"
        elif frozen.state == TrialState.PRUNED:
            what += f" at epoch {frozen.user_attrs.get('pruned_at_epoch')}"
        elif frozen.state == TrialState.FAIL:
            what = "failed"
        best = ""
        with contextlib.suppress(ValueError):
            b = study.best_trial
            best = f"; best: trial {b.number}, {self.objective_name} = {b.value:.4g}"
        console.echo(f"sweep {self.sw.name}: trial {frozen.number} {what}; {c['done']} of {self.trials} done{best}")

    # -- one trial ---------------------------------------------------------------------------------------------
    def objective(self, trial: Any) -> float:
        import optuna

        from plugtrain.core.errors import Stopped
        from plugtrain.core.spec import SpecError, load_spec

        started = datetime.datetime.now(datetime.timezone.utc)
        name = f"trial-{trial.number:04d}"
        tdir = self.sweep_dir / name
        values = {q.name: q.suggest(trial) for q in self.sw.params}
        sampled = [q.override(values[q.name]) for q in self.sw.params]
        places = {q.override(values[q.name]): f"{q.where}: [params] {q.name} = {toml_value(values[q.name])}"
                  for q in self.sw.params}
        own = [*sampled, f"run.primary_metric={toml_value(self.objective_name)}", f"run.mode={toml_value(self.mode)}"]
        history = _frozen(trial).system_attrs.get("retry_history") or []
        retry_of = history[0] if history else None
        trial.set_user_attr("overrides", own)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("run_dir", str(tdir.resolve()))
        record = {"number": trial.number, "state": "RUNNING", "params": values, "objective": self.objective_name,
                  "mode": self.mode, "value": None, "started": started.isoformat(timespec="seconds"),
                  "worker": self.worker, "retry_of": retry_of, "folds": self.sw.folds or None}
        for own_file in ("trial.json", "PRUNED"):  # left by a trial of this number in an earlier study
            (tdir / own_file).unlink(missing_ok=True)
        from plugtrain.core.runtime import rundir

        overwrite = rundir.is_run_dir(tdir)
        if self.sw.folds:
            tdir.mkdir(parents=True, exist_ok=True)
            results.write_json(tdir / "trial.json", record)
        shown = ", ".join(f"{k}={toml_value(v)}" for k, v in values.items())
        again = f" (retry of {retry_of})" if retry_of is not None else ""
        console.echo(f"sweep {self.sw.name}: trial {trial.number}{again}: {shown}; run dir {tdir}")
        overrides = [*self.base, *own, f"run.output_dir={toml_value(str(self.sweep_dir))}",
                     f"run.name={toml_value(name)}"]
        t0 = time.monotonic()

        def finish(state: str, **extra: Any) -> None:
            record.update(state=state, finished=datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), seconds=round(time.monotonic() - t0, 2), **extra)
            tdir.mkdir(parents=True, exist_ok=True)
            results.write_json(tdir / "trial.json", record)

        try:
            try:
                spec = load_spec(self.sw.spec, overrides)
            except SpecError as exc:
                problems = relocate(exc.problems, self.sw.spec, {**self.sw.locations(), **places})
                raise TrialError("the sampled spec is not valid: " + "; ".join(problems)) from None
            epochs = spec.run.epochs
            folds = self.sw.folds
            if folds:
                value, reporters, done_epochs, best_epoch = self._cross_validate(trial, spec, overrides, folds)
            else:
                reporter = Reporter(trial, self.objective_name, 0, final_step=epochs,
                                    on_start=lambda: results.write_json(tdir / "trial.json", record))
                from plugtrain.sweep import runner

                resume = self._resume_point(history, tdir) if not overwrite else None
                if resume is not None:
                    record["resumed_from"] = str(resume)
                    console.echo(f"sweep {self.sw.name}: trial {trial.number} continues trial {history[-1]} from "
                                 f"{resume}")
                try:
                    res = runner.train(self.sw.spec, overrides, overwrite=overwrite, callbacks=[reporter],
                                       resume=str(resume) if resume is not None else None)
                finally:
                    self._carry_rows(tdir)
                reporters, done_epochs = [reporter], res.epochs
                best = res.best_row(self.objective_name, self.mode)
                value, best_epoch = (float(best[1][self.objective_name]), best[0]) if best else (None, None)
            trial.set_user_attr("epochs", done_epochs)
            pruned = next((r for r in reporters if r.pruned_at is not None), None)
            if pruned is not None:
                trial.set_user_attr("pruned_at_epoch", pruned.pruned_at)
                (tdir / "PRUNED").write_text(
                    f"pruned by the {self.sw.pruner.name} pruner after epoch {pruned.pruned_at}: "
                    f"{self.objective_name} = {pruned.last}\n", encoding="utf-8")
                finish("PRUNED", epochs=done_epochs, pruned_at_epoch=pruned.pruned_at, value=pruned.last)
                raise optuna.TrialPruned(f"pruned after epoch {pruned.pruned_at}")
            if value is None:
                raise TrialError(f"no epoch reported a finite {self.objective_name}")
            trial.set_user_attr("best_epoch", best_epoch)
            finish("COMPLETE", value=value, epochs=done_epochs, best_epoch=best_epoch)
            return value
        except optuna.TrialPruned:
            raise
        except Stopped as exc:
            finish("FAIL", error=f"interrupted by signal {exc.signum}; queued again")
            trial.set_user_attr("error", f"interrupted by signal {exc.signum}")
            self._retry(trial, f"interrupted by signal {exc.signum} (last.pt written)")
            raise
        except KeyboardInterrupt:
            finish("FAIL", error="interrupted")
            raise
        except TrialError as exc:
            self._failed(trial, str(exc), finish)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed trial is recorded; the sweep goes on
            msg = str(exc) if isinstance(exc, PlugtrainError) else f"{type(exc).__name__}: {first_line(exc)}"
            self._failed(trial, msg, finish)
            if debug():
                import traceback

                traceback.print_exc()
            raise TrialError(msg) from exc

    def _resume_point(self, history: list[int], tdir: Path) -> Path | None:
        """A retry continues the interrupted attempt (``history[-1]``, same parameters) from its ``last.pt``, when
        that run directory is on this machine: its ``metrics.csv`` rows up to the checkpoint's epoch are carried
        over, and the trainer resumes exactly (epoch, batch, every state and RNG)."""
        if not history:
            return None
        old = self.sweep_dir / f"trial-{int(history[-1]):04d}"
        last = old / "checkpoints" / "last.pt"
        if not last.is_file():
            return None
        try:
            from plugtrain.core.runtime import checkpoint as ckpt

            epoch = int(ckpt.load(last)["epoch"])
        except Exception:  # noqa: BLE001 - an unreadable checkpoint: start the retry from scratch
            return None
        self._carried = (old / "metrics.csv", epoch)
        return last

    def _carry_rows(self, tdir: Path) -> None:
        """Put the interrupted attempt's ``metrics.csv`` rows (up to its checkpoint's epoch) before this run's."""
        import csv

        carried, self._carried = self._carried, None
        if carried is None or not carried[0].is_file() or not (tdir / "metrics.csv").is_file():
            return
        source, epoch = carried
        with source.open(newline="") as f:
            old = [r for r in csv.DictReader(f) if r.get("epoch") and float(r["epoch"]) <= epoch]
        with (tdir / "metrics.csv").open(newline="") as f:
            new = list(csv.DictReader(f))
        seen = {r.get("epoch") for r in new}
        rows = [r for r in old if r.get("epoch") not in seen] + new
        columns: list[str] = []
        for r in rows:
            columns += [c for c in r if c not in columns]
        with atomic_open(tdir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    def _failed(self, trial: Any, msg: str, finish: Any) -> None:
        trial.set_user_attr("error", msg[:2000])
        finish("FAIL", error=msg)
        console.error(f"sweep {self.sw.name}: trial {trial.number} failed: {msg}")

    def _retry(self, trial: Any, reason: str) -> None:
        """Queue the parameters of an interrupted trial again (as Optuna's retry callback does for a dead worker)."""
        import optuna

        retry = retry_callback(optuna, self.sw.max_retries)
        retry.reason = reason
        retry(trial.study, _frozen(trial))

    def _cross_validate(self, trial: Any, spec: Any, overrides: list[str],
                        folds: int) -> tuple[float | None, list[Reporter], int, Any]:
        from plugtrain.sweep import cv

        epochs = spec.run.epochs
        reporters: list[Reporter] = []

        def callbacks_for(k: int) -> list[Any]:
            r = Reporter(trial, self.objective_name, (k - 1) * epochs, final_step=folds * epochs)
            reporters.append(r)
            return [r]

        class _Pruned(Exception):
            pass

        def after_fold(k: int, res: Any) -> None:
            if reporters[-1].pruned_at is not None:
                raise _Pruned

        done = 0
        try:
            result = cv.cross_validate(self.sw.spec, overrides, folds, overwrite=True, callbacks_for=callbacks_for,
                                       after_fold=after_fold)
        except _Pruned:
            return None, reporters, sum(r.pruned_at or epochs for r in reporters), None
        done = sum(r.epochs for r in result.runs)
        cv.print_table(result)
        best_epochs = [e for e, _ in result.best_rows]
        return result.objective, reporters, done, best_epochs


#: The study's user attribute that keeps :meth:`Worker.record` (what a rerun must not change).
RECORD_ATTR = "plugtrain.sweep"


def optuna_distribution(optuna: Any, q: Any) -> Any:
    """The Optuna distribution that ``q.suggest`` samples from (to compare with a trial's)."""
    d = optuna.distributions
    if q.kind == "choice":
        return d.CategoricalDistribution(q.optuna_choices())
    if q.kind == "int":
        return d.IntDistribution(q.low, q.high, log=q.log, step=q.step or 1)
    if q.kind == "log_uniform":
        return d.FloatDistribution(q.low, q.high, log=True)
    return d.FloatDistribution(q.low, q.high, step=q.step)


def _space_of_trials(study: Any) -> dict[str, Any]:
    """Parameter name -> distribution, over the study's trials (the last trial to use a name wins)."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        out.update(t.distributions)
    return out


def _describe(dist: Any) -> str:
    """An Optuna distribution in the words of :meth:`Param.describe`."""
    if hasattr(dist, "choices"):
        return "choice of " + ", ".join(toml_value(c) for c in dist.choices)
    if getattr(dist, "log", False) and not isinstance(dist.low, int):
        return f"log_uniform [{dist.low}, {dist.high}]"
    kind = "int" if isinstance(dist.low, int) else "uniform"
    step = f", step {dist.step}" if getattr(dist, "step", None) not in (None, 1) else ""
    return f"{kind} [{dist.low}, {dist.high}]{step}{' log' if getattr(dist, 'log', False) else ''}"


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` of every leaf that differs between two plain dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in [*a, *(k for k in b if k not in a)]:
            out += _changed_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def _short(v: Any) -> str:
    if v is None:
        return "unset"
    text = toml_value(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _frozen(trial: Any) -> Any:
    """The stored record of a running trial (its system attributes: a retry's ``failed_trial``)."""
    return next(t for t in trial.study.get_trials(deepcopy=True) if t.number == trial.number)


def _guess_mode(objective: str, spec: Any) -> str:
    """The direction of an objective that is not the spec's primary metric: as the spec model guesses it."""
    import attrs

    guess = attrs.evolve(spec, run=attrs.evolve(spec.run, primary_metric=objective, mode=None))
    return guess.mode


def check_only(sw: Sweep, base_spec: Any) -> None:
    """``plugtrain sweep --check``: what the check covered, one line."""
    n = sum(len(q.extremes()) for q in sw.params)
    console.echo(f"{sw.display}: OK ({len(sw.params)} parameter(s), {n} value(s) checked against {sw.spec}; "
                 f"objective {sw.objective or base_spec.primary_metric}; sweep dir "
                 f"{Path(base_spec.run.output_dir) / sw.name})")


__all__ = ["Reporter", "SweepError", "TrialError", "Worker", "check_only", "default_storage", "import_optuna"]
