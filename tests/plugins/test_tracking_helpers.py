"""The pieces every tracker logger shares (:mod:`plugtrain.plugins.tracking`, used by the MLflow and W&B plugins):
closing exactly once, the run-state file, numbers and embeddings."""

from __future__ import annotations

import numpy as np
import torch

from plugtrain.plugins.tracking import ClosedOnce, embedding_matrix, number, read_state, write_state


class Recorder(ClosedOnce):
    def __init__(self, start: bool) -> None:
        self.ended: list[str] = []
        if start:
            self.arm()

    def finish(self, exc):
        self.ended.append(type(exc).__name__ if exc is not None else "clean")


def test_a_tracker_run_ends_once_and_only_when_it_was_started():
    rec = Recorder(start=True)
    rec.close()
    rec.close()
    rec._at_exit()  # what interpreter exit would call: already closed
    assert rec.ended == ["clean"]

    never_closed = Recorder(start=True)
    never_closed._at_exit()
    assert never_closed.ended == ["RuntimeError"]  # "the logger was never closed": not a clean end

    try:
        raise KeyError("boom")
    except KeyError:
        failing = Recorder(start=True)
        failing.close()  # in the runtime's finally: the exception that ends the run
    assert failing.ended == ["KeyError"]

    not_started = Recorder(start=False)
    not_started.close()
    assert not_started.ended == []


def test_state_files_numbers_and_embeddings(tmp_path):
    state = tmp_path / "tracker.json"
    assert read_state(state) is None
    write_state(state, {"run_id": "abc", "step": 3})
    assert read_state(state) == {"run_id": "abc", "step": 3} and not list(tmp_path.glob(".*tmp*"))
    state.write_text("[1, 2]")
    assert read_state(state) is None  # not an object
    state.write_text("{broken")
    assert read_state(state) is None

    assert [number(v) for v in (3, 2.5, True, torch.tensor(1.5), np.float32(0.25), "x", None, torch.ones(2))] == [
        3.0, 2.5, 1.0, 1.5, 0.25, None, None, None]
    m = embedding_matrix(torch.arange(12, dtype=torch.float64).reshape(3, 2, 2))
    assert m.dtype == np.float32 and m.shape == (3, 4) and m[2, 3] == 11
