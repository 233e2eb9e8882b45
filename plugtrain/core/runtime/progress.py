"""The training progress bar, rank 0 only: a rich bar in a terminal, a plain line per log interval otherwise.

It builds on :mod:`plugtrain.core.console` (which rank prints, whether stdout is a terminal); everything else a
command prints goes through :mod:`~plugtrain.core.console` directly.

The loop calls :meth:`Progress.advance` once per batch; it only counts, and redraws at most a few times a second
(``min_interval``). Loss and learning rate reach it at log intervals, when the loop has synchronised anyway.
"""

from __future__ import annotations

import time
from typing import Any

from plugtrain.core import console


def _eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Epoch, step/total, loss, lr, img/s and ETA; rich in a TTY, plain lines otherwise; silent off rank 0."""

    def __init__(self, epochs: int, enabled: bool = True, tty: bool | None = None, min_interval: float = 0.25) -> None:
        self.epochs = epochs
        self.enabled = enabled and console.rank() == 0
        self.tty = console.is_tty() if tty is None else tty
        self.min_interval = min_interval
        self._bar: Any = None
        self._task: Any = None
        self._done = 0
        self._shown = 0
        self._last_draw = 0.0
        self._total = 0
        self._epoch = 0
        self.fields = {"loss": "-", "lr": "-", "ips": "-"}

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, total: int, done: int = 0) -> None:
        """Epoch ``epoch`` (1-based) of ``total`` batches, ``done`` of which were run before a resume."""
        self._epoch, self._total, self._done, self._shown = epoch, total, done, done
        self._t0 = time.monotonic()
        if not self.enabled or not self.tty:
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[ips]} img/s"),
                TimeRemainingColumn(),
                refresh_per_second=4,
                transient=False,
            )
            self._bar.start()
        self._task = self._bar.add_task("train", total=total, completed=done, epoch=f"{epoch}/{self.epochs}",
                                        **self.fields)

    def advance(self) -> None:
        """One batch done: count it; redraw when ``min_interval`` has passed."""
        self._done += 1
        if self._bar is not None:
            now = time.monotonic()
            if now - self._last_draw >= self.min_interval:
                self._last_draw = now
                self._bar.update(self._task, completed=self._done)

    def log(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        """A log interval: update the bar's fields, or print one plain line."""
        if not self.enabled:
            return
        self.fields = {"loss": f"{loss:.4g}", "lr": f"{lr:.3g}", "ips": f"{images_per_s:.0f}"}
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done, **self.fields)
            return
        elapsed = time.monotonic() - self._t0
        ran = max(self._done - self._shown, 1)
        eta = elapsed / ran * (self._total - self._done)
        print(f"epoch {self._epoch}/{self.epochs}  step {self._done}/{self._total}  global_step {step}  "
              f"loss {loss:.4g}  lr {lr:.3g}  {images_per_s:.0f} img/s  eta {_eta(eta)}", flush=True)

    def show(self, loss: float, lr: float, images_per_s: float) -> None:
        """Running values for the bar only (a terminal); prints nothing otherwise."""
        if self.enabled and self._bar is not None and self._task is not None:
            self.fields = {"loss": f"{loss:.4g}", "lr": f"{lr:.3g}", "ips": f"{images_per_s:.0f}"}
            self._bar.update(self._task, completed=self._done, **self.fields)

    def end_epoch(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self._done)
            self._bar.remove_task(self._task)
            self._task = None

    def message(self, text: str) -> None:
        """A line above the bar (or a plain line)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
