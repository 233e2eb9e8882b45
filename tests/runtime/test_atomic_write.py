"""One atomic-write helper (issue 22): a writer that fails leaves the old file and no temporary file behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugtrain.core.atomic import atomic_open, temp_path, write_atomic
from plugtrain.core.runtime.checkpoint import remove_stale_temporaries, save_atomic

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "plugtrain"


def test_write_atomic_replaces_text_and_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    write_atomic(target, b"\x00\x01", fsync=False)
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "metrics.csv"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target, mode) as f:
        f.write("half" if mode == "w" else b"half")
        raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_writer_that_raises_creates_nothing_where_there_was_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_open(tmp_path / "new.bin") as f:
        f.write(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_save_that_fails_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    save_atomic({"a": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an object it cannot pickle
        save_atomic({"a": lambda: 0}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_killed_writers_temporary_is_what_the_stale_cleaner_removes(tmp_path: Path) -> None:
    """The helper's temporary name is the ``.NAME.tmp-PID`` pattern that resume clears for dead processes."""
    tmp = temp_path(tmp_path / "spec.toml")
    dead = tmp.with_name(re.sub(r"tmp-\d+$", "tmp-999999999", tmp.name))
    dead.write_text("torn", encoding="utf-8")
    assert remove_stale_temporaries(tmp_path) == [dead.name]


def test_every_atomic_file_write_goes_through_the_helper() -> None:
    """No module repeats temp-file + ``os.replace``; the ones left move folders or reserve space (other semantics)."""
    allowed = {"core/atomic.py",
               "core/runtime/checkpoint.py",  # copy_atomic: a hard link renamed into place, not a write
               "commands/export.py",  # moves checked files out of a temporary folder
               "plugins/datasets/cache.py"}  # a preallocated (posix_fallocate) file, filled later
    # os.replace(tmp, path), or pathlib's tmp.replace(path) / tmp.rename(path) of a temporary file
    by_hand = re.compile(r"os\.replace\(|\b\w*(tmp|temp)\w*\.(replace|rename)\(", re.IGNORECASE)
    sources = [(str(p.relative_to(PACKAGE)), p) for p in PACKAGE.rglob("*.py")]
    sources += [(str(p.relative_to(REPO)), p) for p in (REPO / "extras").glob("*/src/**/*.py")]
    offenders = [name for name, p in sources if by_hand.search(p.read_text(encoding="utf-8")) and name not in allowed]
    assert offenders == []
