"""Why a run stops before its last epoch: a stop signal the ranks agree on, or a numerical fault.

:class:`StopSignals` holds the signal this process received (from the handler :func:`.session.run` installs) and the
one every rank agreed on at the last check: the trainer stops at a step boundary only on an agreed signal, so that
every rank writes the same ``last.pt`` and leaves the loop together. :func:`numerical_fault` is the one message of a
non-finite loss or model, naming the last good checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugtrain.core.errors import NumericalFault


class StopSignals:
    """The stopping signal received by this process (``received``) and the one the ranks agreed on (``agreed``)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.agreed: int | None = None

    def take_local(self, distributed: bool) -> None:
        """Without other ranks to ask, a received signal is agreed at once."""
        if self.received and not distributed:
            self.agreed = self.received

    def agree(self, dist: Any, bad_step: int) -> int:
        """Agree across ranks on a signal (any rank's) and on a non-finite step (the latest); returns that step."""
        signal = self.received or 0
        if dist.distributed:
            flags = dist.all_reduce(dist.collective_tensor([float(signal), float(bad_step)]), op="max")
            signal, bad_step = int(flags[0].item()), int(flags[1].item())
        if signal:
            self.agreed = signal
        return bad_step


def numerical_fault(what: str, run_dir: Path | None, epoch: int, batch: int, step: int) -> NumericalFault:
    """The fault of a non-finite value during epoch ``epoch`` (0-based) at ``batch``; names the kept ``last.pt``."""
    last = run_dir / "checkpoints" / "last.pt" if run_dir else None
    last = last if last is not None and last.exists() else None
    kept = (f" The last good checkpoint is kept: {last} (resume from it with a lower lr, clipping or another "
            "precision)." if last is not None else " No checkpoint had been written yet.")
    return NumericalFault(f"{what} (epoch {epoch + 1}, batch {batch}); training stopped.{kept}", step, last)
