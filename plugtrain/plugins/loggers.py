"""Loggers: TensorBoard event files, a CSV row per epoch, and a one-line console summary per epoch."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from plugtrain import Component, hookimpl
from plugtrain.core.atomic import atomic_open
from plugtrain.core.runtime.rundir import RunPath, run_path


class TensorBoardLogger:
    """Scalars, images, text and hparams as TensorBoard event files under ``<run_dir>/<subdir>``."""

    def __init__(self, run_dir: Path, subdir: RunPath = "tb", flush_secs: int = 10) -> None:
        log_dir = run_path(run_dir, subdir, what="[loggers] tensorboard subdir")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def log_step_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Every ``trainer.log_every_steps`` optimizer steps: ``step/*`` scalars at the global step."""
        self.log_metrics(metrics, step)

    def log_image(self, tag: str, image: Any, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def log_embedding(self, tag: str, embeddings: Any, labels: list[Any], step: int) -> None:
        self.writer.add_embedding(embeddings, metadata=labels, tag=tag, global_step=step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        final = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
        self.writer.add_hparams(clean, final, run_name=".")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class CSVLogger:
    """A row per epoch in ``<run_dir>/<filename>``; new columns are added as they appear."""

    def __init__(self, run_dir: Path, filename: RunPath = "metrics.csv") -> None:
        self.path = run_path(run_dir, filename, what="[loggers] csv filename")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():  # a resumed run keeps its earlier rows
            with self.path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One row per epoch: a second call for the same epoch (a resumed run replaying it, or ``val_swa/*`` after
        training) updates that epoch's row."""
        row = {"step": step, **metrics}
        for r in self.rows:
            if "epoch" in row and str(r.get("epoch")) == str(row["epoch"]):
                r.update(row)
                break
        else:
            self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns += [c for c in r if c not in columns]
        with atomic_open(self.path, "w", newline="", fsync=False) as f:  # rewritten every epoch: no fsync
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        pass


class ConsoleLogger:
    """One plain line per epoch on stdout: ``epoch 3/15 train/loss=0.1234 val/accuracy=0.9812 ...``."""

    def __init__(self, spec: dict[str, Any] | None = None, digits: int = 4) -> None:
        self.epochs = (spec or {}).get("run", {}).get("epochs")
        self.digits = digits

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        epoch = metrics.get("epoch", step)
        head = f"epoch {epoch}/{self.epochs}" if self.epochs else f"epoch {epoch}"
        parts = []
        for k, v in metrics.items():
            if k == "epoch":
                continue
            parts.append(f"{k}={v:.{self.digits}g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}")
        print(head + "  " + "  ".join(parts), flush=True)

    def close(self) -> None:
        pass


@hookimpl
def plugtrain_loggers():
    return [
        Component("tensorboard", TensorBoardLogger, summary="TensorBoard event files in <run_dir>/tb",
                  roles=("default",)),
        Component("csv", CSVLogger, summary="a row per epoch in <run_dir>/metrics.csv",
                  roles=("default", "metrics_csv")),
        Component("console", ConsoleLogger, summary="one plain summary line per epoch on stdout", roles=("default",)),
    ]
