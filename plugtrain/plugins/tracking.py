"""What every experiment-tracker logger needs (the MLflow and W&B plugins in ``extras/``), written once.

* :class:`ClosedOnce`: a logger that ends its tracker run exactly once: from the runtime's ``finally`` (``close()``,
  with the exception that ends the run, if any) or, when nobody closes it (another logger's factory failed after
  this one was built), at interpreter exit;
* :func:`read_state` / :func:`write_state`: the small JSON file in the run directory that names the tracker's run,
  so that a resumed run continues it (written atomically);
* :func:`number`: a metric value as a float, or None for what is not a number; :func:`embedding_matrix`: embeddings
  (a tensor or an array) as an ``(N, D)`` float32 array.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


class ClosedOnce:
    """Mix-in: :meth:`arm` once the tracker run exists; :meth:`finish` (the subclass's) then runs exactly once."""

    _armed = False
    _closed = False

    def arm(self) -> None:
        import atexit

        self._armed = True
        atexit.register(self._at_exit)

    def close(self) -> None:
        self._close(sys.exc_info()[1])  # close() runs in the runtime's ``finally``: the exception that ends the run

    def _at_exit(self) -> None:
        self._close(RuntimeError("the logger was never closed"))

    def _close(self, exc: BaseException | None) -> None:
        if not self._armed or self._closed:
            return
        self._closed = True
        import atexit

        atexit.unregister(self._at_exit)
        self.finish(exc)

    def finish(self, exc: BaseException | None) -> None:
        """End the tracker run; ``exc`` is what ended training (None: it completed or stopped cleanly)."""


def read_state(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``, atomically."""
    from plugtrain.core.atomic import write_atomic

    write_atomic(path, json.dumps(data, indent=2) + "\n", fsync=False)


def number(value: Any) -> float | None:
    """``value`` (a Python or tensor scalar, a bool) as a float; None when it is not one number."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of more than one element
            return None
    if isinstance(value, (bool, int, float)):
        return float(value)
    return None


def embedding_matrix(embeddings: Any) -> Any:
    """``embeddings`` (a torch tensor or anything numpy reads) as an ``(N, D)`` float32 numpy array."""
    import numpy as np

    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().float().cpu().numpy()
    return np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1)
