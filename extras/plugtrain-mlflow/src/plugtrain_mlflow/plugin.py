"""The plugtrain plugin of this package: the logger ``mlflow``.

Its entry point (``pyproject.toml``: ``[project.entry-points.plugtrain] mlflow = "plugtrain_mlflow.plugin"``) is how
plugtrain finds it. The ``mlflow`` package loads only when the logger is built (on rank 0, when a run starts):
``plugtrain list`` costs what it costs without this package. What every tracker logger needs (closing once, the
state file, numbers) comes from :mod:`plugtrain.plugins.tracking`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugtrain import Component, hookimpl
from plugtrain.core.errors import first_line as _first_line
from plugtrain.plugins.tracking import ClosedOnce, embedding_matrix
from plugtrain.plugins.tracking import number as _number
from plugtrain.plugins.tracking import read_state as _read_json
from plugtrain.plugins.tracking import write_state as _write_json

#: The file in the run directory that names the MLflow run, so that a resumed run continues it.
STATE_FILE = "mlflow.json"
DEFAULT_EXPERIMENT = "plugtrain"
_PREFIX = "plugtrain-mlflow"
_MAX_PENDING = 100_000  # metric values kept for a retry while the tracking store cannot be written


def _warn(message: str) -> None:
    print(f"{_PREFIX}: warning: {message}", file=sys.stderr, flush=True)


class MlflowLogger(ClosedOnce):
    """Logs the run to MLflow: the spec as params, every metric with its step (the per-step ``step/*`` ones too),
    spec.toml/env.json, images.

    ``tracking_uri``: where runs are stored. By default ``$MLFLOW_TRACKING_URI`` when set, else a local SQLite
    database beside the run directories, ``sqlite:///<output_dir>/mlflow.db`` (artifacts in
    ``<output_dir>/mlartifacts``; look at them with ``mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db``).
    A relative path (``sqlite:///tracking.db`` or a plain ``tracking.db``) is taken relative to the output directory;
    ``http(s)://`` and other URIs are used as given. A URI of the wrong shape (``http:/host``, ``htp://host``,
    ``sqlite://t.db``, ``file://tmp/x``, a local store that cannot be made) is refused by ``plugtrain check``
    (:func:`tracking_uri_problem`). A server that cannot be reached within ``connect_timeout`` seconds stops the run
    before training, with one message.

    ``experiment``: the MLflow experiment (created when missing; default ``$MLFLOW_EXPERIMENT_NAME`` or
    ``"plugtrain"``). ``run_name``: default ``run.name`` of the spec. ``tags``: extra run tags.
    ``artifact_location``: where a newly created experiment keeps its artifacts (default: ``mlartifacts`` beside a
    local database; the server's default otherwise). ``log_checkpoint``: upload ``checkpoints/best.pt`` as an artifact
    when the run closes.

    The MLflow run id is kept in ``<run_dir>/mlflow.json``: ``plugtrain train --resume auto`` and elastic restarts
    continue the same MLflow run, and a step the run already has is not logged again.
    """

    def __init__(self, run_dir: Path, spec: dict[str, Any] | None = None, rank: int = 0,
                 tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 tags: dict[str, str] | None = None, log_checkpoint: bool = False,
                 artifact_location: str | None = None, connect_timeout: float = 5.0) -> None:
        from plugtrain.core.errors import PlugtrainError

        self.run_dir = Path(run_dir)
        self.client: Any = None
        self.run_id: str | None = None
        self.log_checkpoint = log_checkpoint
        self._completed = False
        self._created = False  # this process created the MLflow run (not a resumed one)
        self._logged_any = False
        self._last_step = 0
        self._seen: dict[str, set[int]] = {}  # metric key -> steps the run already has (resumed runs)
        self._seen_images: set[tuple[str, int]] = set()
        self._params: dict[str, str] = {}
        self._pending: list[Any] = []
        self._failing = False
        if rank != 0:  # the runtime builds loggers on rank 0 only; anywhere else this logger does nothing
            return
        if not (connect_timeout > 0 and math.isfinite(connect_timeout)):
            raise PlugtrainError(f"[loggers] mlflow: connect_timeout must be a positive number of seconds, "
                                 f"got {connect_timeout}")
        if tags is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise PlugtrainError("[loggers] mlflow: tags must map strings to strings")
        problem = tracking_uri_problem(tracking_uri) if tracking_uri is not None else None
        if problem:
            raise PlugtrainError(f"[loggers] mlflow: tracking_uri: {problem}")
        spec = spec or {}
        run = spec.get("run", {}) if isinstance(spec.get("run"), dict) else {}
        output_dir = _output_dir(self.run_dir, run)
        uri, local_artifacts = resolve_tracking_uri(tracking_uri, output_dir)
        experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        run_name = run_name or run.get("name") or self.run_dir.name
        if artifact_location is None and local_artifacts is not None:
            artifact_location = local_artifacts.as_uri()
        elif artifact_location is not None and "://" not in artifact_location \
                and not Path(artifact_location).is_absolute():  # relative: to the output directory
            artifact_location = (output_dir / artifact_location).resolve().as_uri()
        self.tracking_uri = uri
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param, RunTag
        except ImportError as exc:  # pragma: no cover - mlflow is a dependency of this package
            raise PlugtrainError(f"[loggers] mlflow: the mlflow package cannot be imported ({exc}); "
                                 "pip install mlflow") from None
        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        _quiet_mlflow()
        try:
            with _short_http(connect_timeout):
                if uri.startswith("sqlite:///"):
                    Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
                self.client = MlflowClient(tracking_uri=uri)
                exp = self.client.get_experiment_by_name(experiment)  # the reachability check
            if exp is None:
                try:
                    experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
                except Exception:  # another run created it meanwhile
                    exp = self.client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
                    experiment_id = exp.experiment_id
            elif exp.lifecycle_stage != "active":
                raise PlugtrainError(f"[loggers] mlflow: experiment {experiment!r} in {uri} is deleted; restore it "
                                     "(mlflow experiments restore) or choose another experiment")
            else:
                experiment_id = exp.experiment_id
            self._open_run(experiment_id, experiment, run_name, dict(tags or {}), spec)
            # a logger the runtime never closes (another logger's factory failed after this one was built) still
            # ends its MLflow run, at exit
            self.arm()
        except BaseException as exc:
            if self._created and self.run_id is not None:  # set up half-way: leave no orphan run behind
                self._try("run deletion", lambda: self.client.delete_run(self.run_id))
                (self.run_dir / STATE_FILE).unlink(missing_ok=True)
            self.client = None
            if isinstance(exc, PlugtrainError) or not isinstance(exc, Exception):
                raise
            unreachable = _unreachable(exc)
            if unreachable:
                raise PlugtrainError(f"[loggers] mlflow: cannot reach the tracking server {uri} ({unreachable}; "
                                     f"connect_timeout = {connect_timeout:g} s)") from exc
            raise PlugtrainError(f"[loggers] mlflow: cannot use the tracking store {uri}: "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from exc

    # -- set-up ------------------------------------------------------------------------------------------------------
    def _open_run(self, experiment_id: str, experiment: str, run_name: str, tags: dict[str, str],
                  spec: dict[str, Any]) -> None:
        client = self.client
        state = _read_json(self.run_dir / STATE_FILE)
        run = None
        if state and state.get("tracking_uri") == self.tracking_uri and state.get("run_id"):
            try:
                run = client.get_run(state["run_id"])
            except Exception:  # noqa: BLE001 - deleted from the store: start a new one
                run = None
            if run is not None and run.info.lifecycle_stage != "active":
                run = None
        if run is not None:  # a resumed plugtrain run (--resume auto, an elastic restart): continue its MLflow run
            self.run_id = run.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            self._params = dict(run.data.params)
            for key in run.data.metrics:
                steps = {m.step for m in client.get_metric_history(self.run_id, key)}
                self._seen[key] = steps
                self._last_step = max([self._last_step, *steps])
            self._seen_images = _logged_images(client, self.run_id)
        else:
            from plugtrain import __version__ as plugtrain_version

            all_tags = {"plugtrain.run_dir": str(self.run_dir.resolve()), "plugtrain.version": plugtrain_version,
                        "mlflow.source.type": "LOCAL", "mlflow.source.name": "plugtrain train"}
            git = (_read_json(self.run_dir / "env.json") or {}).get("git")
            if isinstance(git, dict) and git.get("commit"):
                all_tags["mlflow.source.git.commit"] = str(git["commit"])
            all_tags.update(tags)
            created = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            self.run_id = created.info.run_id
            self._created = True
        _write_json(self.run_dir / STATE_FILE, {
            "run_id": self.run_id, "experiment_id": experiment_id, "experiment": experiment,
            "tracking_uri": self.tracking_uri,
            "artifact_uri": client.get_run(self.run_id).info.artifact_uri,
        })
        if run is not None and tags:
            client.log_batch(self.run_id, tags=[self._RunTag(k, v) for k, v in tags.items()])
        self._log_params(flatten_spec(spec))
        for name in ("spec.toml", "env.json"):
            path = self.run_dir / name
            if path.is_file():
                client.log_artifact(self.run_id, str(path))

    def _log_params(self, params: dict[str, str], note_changes: bool = True) -> None:
        """Log the params the run does not have yet; a value that changed on resume is noted in a tag (MLflow
        params cannot change)."""
        new, changed = [], []
        for key, value in params.items():
            if key not in self._params:
                new.append(self._Param(key, value))
                self._params[key] = value
            elif self._params[key] != value:
                changed.append(key)
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        if changed and note_changes:
            self.client.set_tag(self.run_id, "plugtrain.params_changed_on_resume", ", ".join(changed)[:5000])

    # -- the logger contract -------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        step = int(step)
        ts = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            x = _number(value)
            if x is None:
                continue
            key = metric_key(key)
            if step in self._seen.get(key, ()):
                continue  # a resumed run replays a step this run already has
            batch.append(self._Metric(key, x, ts, step))
            self._seen.setdefault(key, set())
        self._last_step = max(self._last_step, step)
        self._logged_any = True
        self._send(batch)

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Every ``trainer.log_every_steps`` optimizer steps: ``step/loss``, ``step/lr``, ``step/grad_norm``,
        ``step/throughput`` at the global step (a resumed run skips the steps its history has, as for epochs)."""
        self.log_metrics(metrics, step)

    def log_image(self, tag: str, image: Any, step: int) -> None:
        if self.client is None or (tag, int(step)) in self._seen_images:
            return
        import numpy as np

        self._try(f"image {tag!r} at step {step}",
                  lambda: self.client.log_image(self.run_id, np.asarray(image), key=metric_key(tag), step=int(step)))
        self._seen_images.add((tag, int(step)))

    def log_embedding(self, tag: str, embeddings: Any, labels: list[Any], step: int) -> None:
        """The embeddings as TensorBoard-projector TSV files (``vectors.tsv``, ``metadata.tsv``) under
        ``embeddings/<tag>/step-<step>/`` (a replayed step overwrites its files)."""
        if self.client is None:
            return
        import tempfile

        import numpy as np

        vectors = embedding_matrix(embeddings)
        with tempfile.TemporaryDirectory(prefix="plugtrain-mlflow-") as tmp:
            np.savetxt(Path(tmp) / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
            (Path(tmp) / "metadata.tsv").write_text("".join(f"{_plain_label(x)}\n" for x in labels), encoding="utf-8")
            self._try(f"embedding {tag!r} at step {step}",
                      lambda: self.client.log_artifacts(self.run_id, tmp, f"embeddings/{tag}/step-{int(step):08d}"))

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """At the end of training: any hparam not yet a param, and final metrics that no epoch logged (SWA's, say)."""
        if self.client is None:
            return
        hp = {param_key(k): param_value(v) for k, v in hparams.items()}
        self._try("hparams", lambda: self._log_params(hp, note_changes=False))
        final = {k: v for k, v in metrics.items() if metric_key(k) not in self._seen and _number(v) is not None}
        if final:
            self.log_metrics(final, self._last_step)
        self._completed = True

    def finish(self, exc: BaseException | None) -> None:
        """Send what is pending, log ``best.pt`` when asked, and end the MLflow run with its status."""
        from plugtrain.core.errors import Stopped

        if self.client is None:
            return
        if self._pending:
            self._send([])
        if self._pending:
            _warn(f"{len(self._pending)} metric value(s) could not be written to {self.tracking_uri} and are lost")
        best = self.run_dir / "checkpoints" / "best.pt"
        if self.log_checkpoint and best.is_file():
            self._try("checkpoints/best.pt", lambda: self.client.log_artifact(self.run_id, str(best), "checkpoints"))
        if self._completed and exc is None:
            status = "FINISHED"
        elif exc is None or isinstance(exc, (KeyboardInterrupt, Stopped)):
            status = "KILLED"  # stopped before the end (SIGTERM/SIGINT): --resume auto continues this MLflow run
        else:
            status = "FAILED"
        self._try("run status", lambda: self.client.set_terminated(self.run_id, status))
        if exc is not None and self._created and not self._logged_any:
            # perhaps the plugtrain run never started (another logger's factory failed, say): then the runtime removes
            # its fresh run directory, and this MLflow run goes too
            if self.run_dir.exists():
                import atexit

                atexit.register(self._delete_if_discarded)
            else:
                self._delete_if_discarded()

    def _delete_if_discarded(self) -> None:
        if not self.run_dir.exists():
            self._try("run deletion", lambda: self.client.delete_run(self.run_id))

    # -- writing, without stopping training when the store goes away mid-run -----------------------------------------
    def _send(self, batch: list[Any]) -> None:
        todo = self._pending + batch
        sent = 0
        try:
            while sent < len(todo):
                self.client.log_batch(self.run_id, metrics=todo[sent:sent + 1000])
                sent = min(sent + 1000, len(todo))
        except Exception as exc:  # noqa: BLE001 - training goes on; the values are retried with the next call
            self._pending = todo[sent:][-_MAX_PENDING:]
            if not self._failing:
                _warn(f"cannot write metrics to {self.tracking_uri} ({type(exc).__name__}: {_first_line(exc)}); "
                      "training goes on and they are retried with the next call")
            self._failing = True
            return
        self._pending = []
        if self._failing:
            _warn(f"writing to {self.tracking_uri} works again; the held-back metrics were written")
        self._failing = False

    def _try(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a lost image must not stop training; never silent either
            _warn(f"could not log {what} to {self.tracking_uri}: {type(exc).__name__}: {_first_line(exc)}")


# -- helpers -------------------------------------------------------------------------------------------------------------


def _output_dir(run_dir: Path, run: dict[str, Any]) -> Path:
    """The run's output directory (``run.output_dir``; the run name may have sub/folders), absolute."""
    out = run.get("output_dir")
    if isinstance(out, str) and out:
        return Path(out).resolve()
    return run_dir.resolve().parent


def resolve_tracking_uri(tracking_uri: str | None, output_dir: Path) -> tuple[str, Path | None]:
    """The tracking URI to use and, for a local SQLite database, the artifact directory beside it.

    ``None``: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<output_dir>/mlflow.db``. ``sqlite:///REL`` and plain paths
    are taken relative to ``output_dir`` (a plain path ending in ``.db``/``.sqlite`` is a SQLite database, another one
    a directory store); anything else is returned unchanged.
    """
    if tracking_uri is None:
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        if tracking_uri is None:
            db = output_dir / "mlflow.db"
            return f"sqlite:///{db}", output_dir / "mlartifacts"
    uri = tracking_uri.strip()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if str(path) in ("", ":memory:"):
            return uri, None
        path = path if path.is_absolute() else (output_dir / path).resolve()
        return f"sqlite:///{path}", path.parent / "mlartifacts"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", uri) or uri.startswith(("databricks", "file:")):
        return uri, None
    path = Path(uri).expanduser()
    path = path if path.is_absolute() else (output_dir / path).resolve()
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path}", path.parent / "mlartifacts"
    return path.as_uri(), None


#: The tracking-store schemes MLflow itself knows (its ``_tracking_store_registry``; a database scheme may carry a
#: SQLAlchemy driver: ``postgresql+psycopg2``); MLflow plugins add theirs through ``mlflow.tracking_store``.
_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.S)


def _plugin_schemes() -> list[str]:
    """The schemes installed MLflow plugins register (entry points ``mlflow.tracking_store``); no mlflow import."""
    from importlib.metadata import entry_points

    try:
        return [ep.name for ep in entry_points(group="mlflow.tracking_store")]
    except Exception:  # noqa: BLE001 - broken metadata: only MLflow's own schemes
        return []


def _local_store_problem(path: str) -> str | None:
    """Why a local store at the absolute ``path`` could not be made (looked at, nothing written), or None."""
    p = Path(path)
    if p.exists():
        return None
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder, so {path} cannot be made"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be made: {parent} is not writable"
    return None


def tracking_uri_problem(uri: Any) -> str | None:
    """Why ``tracking_uri`` is not a tracking store MLflow can use, by its shape (no network, nothing written), or
    None: a scheme MLflow (or an installed MLflow plugin) knows, ``//HOST`` for a server, three slashes for
    ``sqlite:///PATH``, an absolute path for ``file:``, and a local store that can be made."""
    if not isinstance(uri, str):
        return f"expected a URI or a path, got {uri!r}"
    text = uri.strip()
    if not text:
        return "an empty tracking_uri names no store: leave it out for the default (sqlite:///<output_dir>/mlflow.db)"
    m = _SCHEME.fullmatch(text)
    if m is None or len(m.group(1)) == 1:  # a plain path (relative to the output directory), or C:\...
        path = Path(text).expanduser()
        return _local_store_problem(str(path)) if path.is_absolute() else None
    scheme, rest = m.group(1).lower(), m.group(2)
    base = scheme.split("+", 1)[0]
    known = [*_SCHEMES, *_plugin_schemes()]
    if base not in known and scheme not in known:
        from plugtrain.core.errors import did_you_mean

        if rest.isdigit():  # localhost:5000
            return f"{uri!r} has no scheme: a server is http://{text} (or https://)"
        return (f"{uri!r}: MLflow knows no {m.group(1)}: tracking store.{did_you_mean(base, known)} It knows "
                f"{', '.join(s + ':' for s in known)} and plain paths")
    if re.search(r"\s", text):
        return (f"{uri!r}: a URI holds no spaces (write %20 for one: {text.replace(' ', '%20')!r}), or give the "
                "plain path")
    if base in ("http", "https"):
        from urllib.parse import urlsplit

        parts = urlsplit(text)
        if not rest.startswith("//") or not parts.hostname:
            return f"{uri!r} is not a server URL: write {base}://HOST[:PORT] (two slashes, then the host)"
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
        except ValueError:
            return f"{uri!r}: the port after the host is not a number in 0..65535"
        return None
    if base == "sqlite":
        if not rest.startswith("///"):
            return (f"{uri!r} is not a SQLite URI: write sqlite:///PATH (three slashes; a relative PATH is relative to "
                    "the output directory, sqlite:////abs/path for an absolute one)")
        path = rest[3:]
        return _local_store_problem(path) if path.startswith("/") else None
    if base in _DB_SCHEMES:
        return None if rest.startswith("//") else f"{uri!r} is not a database URI: write {scheme}://USER@HOST/DB"
    if base == "file":
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            return (f"{uri!r} names the host {parts.netloc!r}: a file URI is file:///ABSOLUTE/PATH (three slashes; "
                    f"file:///{parts.netloc}{parts.path} if that is what was meant)")
        if not parts.path.startswith("/"):
            return f"{uri!r} is not an absolute file URI: write file:///ABSOLUTE/PATH, or the plain path"
        return _local_store_problem(unquote(parts.path))
    return None


def validate(factory: Any, params: dict[str, Any], defaults: dict[str, Any]) -> list[tuple[str | None, str, bool]]:
    """``plugtrain check`` of the logger's ``tracking_uri`` (this module's ``PLUGTRAIN_VALIDATE``), or of
    ``$MLFLOW_TRACKING_URI`` when the spec names none: its shape, see :func:`tracking_uri_problem`."""
    given = params.get("tracking_uri", defaults.get("tracking_uri"))
    if given is not None:
        problem = tracking_uri_problem(given)
        return [("tracking_uri", problem, False)] if problem else []
    env = os.environ.get("MLFLOW_TRACKING_URI")
    problem = tracking_uri_problem(env) if env else None
    return [(None, f"$MLFLOW_TRACKING_URI (the default tracking_uri): {problem}", False)] if problem else []


PLUGTRAIN_VALIDATE = validate


def flatten_spec(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.003}}`` -> ``{"optimizer.lr": "0.003"}``; arrays (loggers, augmentations) as JSON; every
    value cut to MLflow's param value limit."""
    out: dict[str, str] = {}
    for k, v in spec.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_spec(v, key + "."))
        else:
            out[param_key(key)] = param_value(v)
    return out


def param_value(value: Any, limit: int | None = None) -> str:
    if limit is None:
        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit  # noqa: N811
        except ImportError:  # pragma: no cover
            limit = 500
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > limit:
        marker = "...[truncated]"
        text = text[:limit - len(marker)] + marker
    return text


def param_key(key: str) -> str:
    return metric_key(key)[:250]


def metric_key(key: str) -> str:
    """A key MLflow accepts: alphanumerics, ``_ - . / :`` and spaces; anything else becomes ``_``."""
    clean = re.sub(r"[^/\w.\- :]", "_", str(key)).strip("/") or "_"
    return re.sub(r"/{2,}", "/", clean).replace("/./", "/")[:250]


def _plain_label(x: Any) -> str:
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    return str(x).replace("\t", " ").replace("\n", " ")


def _logged_images(client: Any, run_id: str) -> set[tuple[str, int]]:
    """The (key, step) pairs of the images a run has (MLflow names them ``images/<key>+step+<n>+...``)."""
    seen: set[tuple[str, int]] = set()
    try:
        files = client.list_artifacts(run_id, "images")
    except Exception:  # noqa: BLE001 - no images yet
        return seen
    for f in files:
        m = re.match(r"^(.*)\+step\+(\d+)\+", f.path.rsplit("/", 1)[-1])
        if m:
            seen.add((m.group(1).replace("~", "/"), int(m.group(2))))
    return seen


@contextmanager
def _short_http(timeout: float) -> Iterator[None]:
    """No retries and a short timeout for the first request to a server, so that an unreachable one is reported in
    seconds; the rest of the run keeps MLflow's (or the user's) retry settings."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout)))}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quiet_mlflow() -> None:
    """MLflow's set-up chatter (creating database tables, alembic migrations) is not the user's business."""
    import logging

    for name in ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store", "alembic",
                 "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _unreachable(exc: BaseException) -> str | None:
    """``"connection refused"``, ``"timed out"``, ...: why a server could not be reached, or None for other errors."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m and ("Connection" in text or "connect" in text):
        return m.group(1).strip().lower()
    for pattern, reason in (("timed out", "timed out"), ("Read timed out", "timed out"),
                            ("Name or service not known", "unknown host"), ("NewConnectionError", "no connection")):
        if pattern in text:
            return reason
    return None


@hookimpl
def plugtrain_loggers():
    return [Component("mlflow", MlflowLogger,
                      summary="MLflow tracking: spec as params, metrics per step, artifacts, images; resumable")]
