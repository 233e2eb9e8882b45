"""The decoded-sample cache (``data.cache = "memory" | "disk"``, issue 17 item 1): bitwise the batches of the
uncached path, filled on first touch by the DataLoader workers, one shared file per machine, bounded before it is
made, never serving a half-written slot.

Everything is real: image files written here, the runtime's own sampler / per-sample seeding / workers / collate,
files in /dev/shm, child processes that share one cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers_data import assert_same_batches, build_for, epoch_batches, folder_spec, shm_files, write_folder

from plugtrain.core.data import SampleError
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry
from plugtrain.plugins.datasets.cache import room_problem


def _build(name: str, params: dict, on_error: str = "raise"):
    return get_registry().get("datasets", name).build(params, seed=0, on_error=on_error, image_size=None)


def test_cached_batches_are_bitwise_the_uncached_ones_over_two_epochs_with_workers(tmp_path):
    root = write_folder(tmp_path / "images")
    data = {"dataset": "imagefolder", "root": str(root), "drop_last": False}  # every sample in every epoch
    whole = {"max_steps_per_epoch": None}
    plain = build_for(folder_spec(tmp_path / "plain.toml", tmp_path / "runs", data, trainer=whole))
    cached = build_for(folder_spec(tmp_path / "cached.toml", tmp_path / "runs", {**data, "cache": "memory"},
                                   trainer=whole))
    split = cached.splits.train
    assert split.cache is not None and split.cache.filled() == 0 and len(split) % 8
    reference = epoch_batches(plain, range(2))

    def overwrite_sources(epoch: int) -> None:
        # after the first epoch filled the cache, every file gets other pixels (same names): the second cached
        # epoch can only equal the reference if it reads the cache, not the files
        assert split.cache.filled() == len(split), "the workers' first epoch did not fill every slot"
        from PIL import Image

        for p in split.paths:
            with Image.open(p) as im:
                size = im.size
            Image.fromarray(np.full((size[1], size[0], 3), 7, np.uint8)).save(p, format="PNG")

    got = epoch_batches(cached, range(2), between=overwrite_sources)
    assert assert_same_batches(got, reference) == 2 * -(-len(split) // 8)
    assert len({im.shape[:2] for im in (plain.splits.train[i][0] for i in range(len(split)))}) > 5  # varied sizes
    with pytest.raises(AssertionError):  # and the test can fail: the files now decode to other pixels
        assert_same_batches(epoch_batches(plain, range(1, 2)), reference[1:])


def test_first_touch_fills_and_a_disk_cache_is_reused_by_the_next_build(tmp_path, capsys):
    root = write_folder(tmp_path / "images", per_class=6)
    params = {"root": str(root), "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    first = _build("imagefolder", params)
    out = capsys.readouterr().out
    assert "imagefolder-train cache (disk): 14 images" in out and "new: filled as the first epoch reads them" in out
    for i in range(5):
        first.train[i]
    again = _build("imagefolder", params)
    assert "5 of 14 already decoded" in capsys.readouterr().out
    assert again.train.cache.path == first.train.cache.path
    data = sorted((tmp_path / "cache" / "decoded").glob("*.data"))
    assert [p.name.split("-")[1] for p in data] == ["train", "val"]
    # the file is the decoded pixels: the 4 KiB CRC table, then exactly sum(h * w * 3) bytes
    sizes = sum(first.train[i][0].size for i in range(len(first.train)))
    assert os.path.getsize(first.train.cache.path) == 4096 + sizes
    plain = _build("imagefolder", {"root": str(root)})
    for i in range(len(first.train)):
        image = again.train[i][0]
        assert np.array_equal(image, plain.train[i][0]) and image.flags.writeable


def test_key_follows_files_decoder_and_channels(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4)
    base = {"root": str(root), "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    path = _build("imagefolder", base).train.cache.path
    assert _build("imagefolder", {**base, "decoder": "cv2"}).train.cache.path != path
    assert _build("imagefolder", {**base, "channels": 1}).train.cache.path != path
    one = sorted((root / "ant").iterdir())[0]
    os.utime(one, ns=(1, 1))  # a changed file (new mtime): another key, never stale pixels
    assert _build("imagefolder", base).train.cache.path != path


def test_half_written_slots_and_stale_temporary_files(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4)
    params = {"root": str(root), "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    ds = _build("imagefolder", params)
    truth = [ds.train[i][0] for i in range(len(ds.train))]  # fills every slot
    cache = ds.train.cache
    assert cache.filled() == len(truth)
    # a writer killed half-way: pixels of slot 2 partly overwritten, its CRC still there
    start = int(cache.offsets[2])
    with open(cache.path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * 10)
    stale = Path(f"{cache.path}.tmp-999999")
    stale.write_bytes(b"half a cache")
    again = _build("imagefolder", params)
    assert not stale.exists()  # a maker that died: its temporary file is removed by the next one
    assert again.train.cache.read(2) is None  # the CRC does not match: never served
    for i, t in enumerate(truth):
        assert np.array_equal(again.train[i][0], t)  # decoded again (and the slot rewritten)
    assert again.train.cache.read(2) is not None
    # a cache whose layout was never written (killed between the two renames) is made again
    os.unlink(cache.path.replace(".data", ".layout.npz"))
    third = _build("imagefolder", params)
    assert third.train.cache.filled() == 0 and np.array_equal(third.train[0][0], truth[0])


def test_unreadable_files_fail_or_skip_exactly_as_without_cache(tmp_path, capsys):
    root = write_folder(tmp_path / "images", per_class=5)
    good = sorted((root / "bee").glob("*.png"))[0]
    (root / "bee" / "zz-empty.png").write_bytes(b"")
    (root / "bee" / "zz-truncated.png").write_bytes(good.read_bytes()[:60])
    plain = _build("imagefolder", {"root": str(root), "val_fraction": 0.2}, on_error="skip")
    cached = _build("imagefolder", {"root": str(root), "val_fraction": 0.2, "cache": "memory"}, on_error="skip")
    assert "unreadable header(s): decoded each time" in capsys.readouterr().out
    for split in ("train", "val"):
        a, b = getattr(plain, split), getattr(cached, split)
        for _ in range(2):  # a bad sample stays bad on every read (never cached as pixels)
            for i in range(len(a)):
                try:
                    x = a[i][0]
                except SampleError as exc:
                    with pytest.raises(SampleError) as caught:
                        b[i]
                    assert (caught.value.path, caught.value.reason) == (exc.path, exc.reason)
                    continue
                assert np.array_equal(x, b[i][0])


def test_a_cache_that_does_not_fit_is_refused_before_anything_is_made(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4)
    with pytest.raises(PlugtrainError) as caught:
        _build("imagefolder", {"root": str(root), "cache": "disk", "cache_dir": str(tmp_path / "cache"),
                               "cache_max_gb": 1e-6})
    message = str(caught.value)
    assert 'cache = "disk": the imagefolder-train split decodes to ' in message and "cache_max_gb" in message
    assert not list((tmp_path / "cache" / "decoded").glob("*.data"))
    # the memory and disk rules, with this machine's real figures scaled past them
    from plugtrain.plugins.datasets.cache import memory_figures

    mem = memory_figures()
    assert mem["available"] > 0 and mem["total"] >= mem["available"]
    msg = room_problem(mem["available"] + 1, "memory", "imagefolder-train", free=mem["available"], total=mem["total"],
                       fs_free=10**15)
    assert msg and "of memory can hold it" in msg and "kept free for training" in msg and 'cache = "disk"' in msg
    assert room_problem(1000, "memory", "x", free=mem["available"], total=mem["total"], fs_free=999)
    assert "/dev/shm has 999 B free" in room_problem(1000, "memory", "x", free=10**12, total=10**12, fs_free=999)
    assert "the disk has" in room_problem(10**12, "disk", "x", free=10**11, total=10**12)
    assert room_problem(10**6, "disk", "x", free=10**11, total=10**12) is None
    with pytest.raises(PlugtrainError, match="cache must be one of 'none', 'memory', 'disk'"):
        _build("imagefolder", {"root": str(root), "cache": "ram"})


_CHILD = textwrap.dedent("""
    import sys
    from plugtrain.core.registry import get_registry
    ds = get_registry().get("datasets", "imagefolder").build(
        {"root": sys.argv[1], "cache": "memory"}, seed=0, on_error="raise", image_size=None)
    for i in range(len(ds.train)):
        ds.train[i]
    print("PATH", ds.train.cache.path, ds.train.cache.filled(), flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.readline()
""")


def test_memory_cache_is_one_file_per_machine_removed_when_the_last_process_exits(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PLUGTRAIN_PLAIN": "1"}
    env.pop("RANK", None)
    first = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), "wait"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = next(ln for ln in first.stdout if ln.startswith("PATH"))
        path = line.split()[1]
        assert path.startswith(f"/dev/shm/plugtrain-cache-{os.getuid()}/imagefolder-train-") and os.path.exists(path)
        inode = os.stat(path).st_ino
        second = subprocess.run([sys.executable, "-c", _CHILD, str(root), "exit"], capture_output=True, text=True,
                                env=env, timeout=120)
        assert second.returncode == 0, second.stderr
        filled = line.split()[2]
        assert f"{filled} of {filled} already decoded" in second.stdout
        # the second process used the first one's file (same inode, already filled) and, exiting first, left it
        assert f"PATH {path} {filled}" in second.stdout and os.stat(path).st_ino == inode
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
    stem = path[:-len(".data")]
    assert not [p for p in shm_files(f"{Path(stem).name}*")], "the last process out did not remove the cache"


def test_csv_manifest_cache(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4)
    rows = ["path,label"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.*"))]
    (root / "all.csv").write_text("\n".join(rows) + "\n")
    plain = _build("csv", {"csv": str(root / "all.csv")})
    cached = _build("csv", {"csv": str(root / "all.csv"), "cache": "disk", "cache_dir": str(tmp_path / "c")})
    assert Path(cached.train.cache.path).name.startswith("csv-train-")
    for _ in range(2):
        for i in range(len(plain.train)):
            assert np.array_equal(plain.train[i][0], cached.train[i][0])
