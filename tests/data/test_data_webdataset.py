"""WebDataset shards (issue 17 item 2): ``plugtrain shards`` writes them, the ``webdataset`` dataset indexes them for
random access and returns the very samples, in the very order, of the data set they came from.

Real tar shards written here (by the command, by webdataset's own TarWriter, by Python's tarfile in GNU and pax
formats), read back by webdataset's own streaming reader too; real ``pipe:`` commands.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from helpers_data import CLASSES, folder_spec, write_folder

from plugtrain.core.data import SampleError
from plugtrain.core.errors import PlugtrainError
from plugtrain.core.registry import get_registry
from plugtrain.plugins.datasets.decode import decode_bytes, decode_image
from plugtrain.plugins.datasets.webdataset import tar_members


def _build(name: str, params: dict, on_error: str = "raise", seed: int = 0):
    return get_registry().get("datasets", name).build(params, seed=seed, on_error=on_error, image_size=None)


def _same_samples(a, b) -> int:
    assert len(a) == len(b)
    for i in range(len(a)):
        (x, t), (y, u) = a[i], b[i]
        assert x.dtype == y.dtype == np.uint8 and np.array_equal(x, y), i
        assert t == u, i
    return len(a)


def test_decode_bytes_gives_the_pixels_and_the_faults_of_decode_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    files = {"rgb.png": rgb, "gray.png": rgb[..., 0], "rgba.png": np.dstack([rgb, rgb[..., :1]]),
             "photo.jpg": rgb, "pic.bmp": rgb, "pic.webp": rgb, "pic.tif": rgb}
    for name, array in files.items():
        Image.fromarray(array).save(tmp_path / name, **({"quality": 80} if name.endswith("jpg") else {}))
    Image.fromarray(np.full((5, 4), 0xAB12, np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    good = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[:70])
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes()[:200])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(os.urandom(200))
    checked = 0
    for path in sorted(tmp_path.iterdir()):
        for channels in (1, 3):
            for decoder in ("pil", "cv2"):
                name = f"shard.tar:0001.{path.name.split('.')[-1]}"
                try:
                    want = decode_image(path, channels, decoder)
                except SampleError as exc:
                    with pytest.raises(SampleError) as caught:
                        decode_bytes(path.read_bytes(), name, channels, decoder)
                    assert caught.value.path == name and caught.value.reason == exc.reason, path.name
                    checked += 1
                    continue
                got = decode_bytes(path.read_bytes(), name, channels, decoder)
                assert got.dtype == want.dtype and np.array_equal(got, want), (path.name, channels, decoder)
                checked += 1
    assert checked == 13 * 4


def test_shards_command_from_a_folder_returns_the_folders_samples_in_order(tmp_path, capsys):
    root = write_folder(tmp_path / "images", per_class=9)
    out = tmp_path / "shards"
    assert cli("shards", root, "--out", out, "--shard-size", 5, "--seed", 3) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "plugtrain-shards.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["task"] == "classification" and meta["channels"] == 3
    train = meta["splits"]["train"]
    assert train["samples"] == 22 and train["samples_per_shard"] == [5, 5, 5, 5, 2]
    assert train["pattern"] == "train-{000000..000004}.tar" and f"{out}/train-{{000000..000004}}.tar" in printed
    assert 'dataset = "webdataset"' in printed
    folder = _build("imagefolder", {"root": str(root)}, seed=3)
    for shards in (str(out), [str(out / "train-{000000..000002}.tar"), str(out / "train-00000{3,4}.tar")]):
        params = {"shards": shards} if isinstance(shards, str) else {
            "shards": shards, "val_shards": str(out / "val-000000.tar")}
        ds = _build("webdataset", params)
        assert ds.class_names == list(CLASSES) and ds.in_chans == 3 and ds.test is None
        assert _same_samples(ds.train, folder.train) == 22 and _same_samples(ds.val, folder.val) == 5
    # plugtrain predict reads a file as the shards' samples come out (the decoder the metadata names)
    read = get_registry().get("datasets", "webdataset").factory.read_image
    some = folder.train.path(4)
    assert np.array_equal(read(some, in_chans=3, params={"shards": str(out)}), decode_image(some, 3, meta["decoder"]))
    # webdataset's own streaming reader sees the same samples (the shards are standard)
    import webdataset as wds

    streamed = list(wds.WebDataset(str(out / "train-{000000..000004}.tar"), shardshuffle=False))
    assert [s["__key__"] for s in streamed] == [f"{i:08d}" for i in range(22)]
    assert [int(s["cls"]) for s in streamed] == folder.train.targets
    assert all(s[os.path.splitext(folder.train.path(i))[1][1:]] == Path(folder.train.path(i)).read_bytes()
               for i, s in enumerate(streamed))  # the files' own bytes, not re-encoded
    # the same data set gives byte-identical shards; a folder that holds shards is not overwritten silently
    before = (out / "train-000000.tar").read_bytes()
    with pytest.raises(PlugtrainError, match="is not empty"):
        cli_raising("shards", root, "--out", out)
    assert cli("shards", root, "--out", out, "--shard-size", 5, "--seed", 3, "--overwrite") == 0
    assert (out / "train-000000.tar").read_bytes() == before


def cli_raising(*args):
    from plugtrain.commands import shards

    a = [str(x) for x in args]
    return shards.run(a[1], out=a[3])


def test_shards_from_specs_in_memory_digits_and_a_regression_manifest(tmp_path):
    spec = folder_spec(tmp_path / "digits.toml", tmp_path / "runs", {"dataset": "sklearn-digits", "upscale": 2})
    assert cli("shards", spec, "--out", tmp_path / "d", "--shard-size", 400) == 0
    digits = _build("sklearn-digits", {"upscale": 2})
    ds = _build("webdataset", {"shards": str(tmp_path / "d")})
    assert ds.in_chans == digits.in_chans == 1 and ds.class_names == digits.class_names
    assert _same_samples(ds.train, digits.train) == len(digits.train)  # pixels stored as lossless PNG
    assert _same_samples(ds.val, digits.val) == len(digits.val)

    root = write_folder(tmp_path / "images", per_class=4)
    rows = ["path,size,brightness"] + [f"{p.relative_to(root)},{i * 0.5},{-i / 3}" for i, p in
                                       enumerate(sorted(root.rglob("*.*")))]
    (root / "reg.csv").write_text("\n".join(rows) + "\n")
    spec = folder_spec(tmp_path / "reg.toml", tmp_path / "runs", {"dataset": "csv", "csv": str(root / "reg.csv")},
                       run={"task": "regression", "primary_metric": "val/loss", "mode": "min"}, loss={"name": "MSE"})
    assert cli("shards", spec, "--out", tmp_path / "r") == 0
    csv = _build("csv", {"csv": str(root / "reg.csv")})
    reg = _build("webdataset", {"shards": str(tmp_path / "r")})
    assert reg.task == "regression" and reg.class_names == ["size", "brightness"]
    for a, b in ((reg.train, csv.train), (reg.val, csv.val)):
        for i in range(len(a)):
            (x, t), (y, u) = a[i], b[i]
            assert np.array_equal(x, y) and np.array_equal(t, u) and t.dtype == np.float32


def test_pipe_urls_are_fetched_once_and_brace_patterns_lists_and_val_fraction(tmp_path, capsys):
    root = write_folder(tmp_path / "images", per_class=6)
    out = tmp_path / "shards"
    assert cli("shards", root, "--out", out, "--shard-size", 4) == 0
    capsys.readouterr()
    folder = _build("imagefolder", {"root": str(root)})
    params = {"shards": f"pipe:cat {out}/train-{{000000..000003}}.tar", "val_shards": f"pipe:cat {out}/val-000000.tar",
              "cache_dir": str(tmp_path / "cache")}
    ds = _build("webdataset", params)
    fetched = sorted((tmp_path / "cache" / "shards").glob("fetched-*.tar"))
    assert len(fetched) == 5 and capsys.readouterr().out.count("data: fetching pipe:cat ") == 5
    assert _same_samples(ds.train, folder.train) == 14
    assert ds.train.path(0) == f"pipe:cat {out}/train-000000.tar:00000000.png"
    _build("webdataset", params)
    assert "fetching" not in capsys.readouterr().out  # fetched once, then read locally
    with pytest.raises(PlugtrainError, match="cannot read shard pipe:false"):
        _build("webdataset", {**params, "shards": "pipe:false"})
    # no validation shards: val_fraction of the train shards, stratified, with the seed
    held = _build("webdataset", {"shards": str(out / "train-{000000..000003}.tar"), "val_fraction": 0.25}, seed=5)
    assert len(held.train) + len(held.val) == 14 and len(held.val) == 4 and held.class_names == list(CLASSES)
    again = _build("webdataset", {"shards": str(out / "train-{000000..000003}.tar"), "val_fraction": 0.25}, seed=5)
    assert [held.val.path(i) for i in range(4)] == [again.val.path(i) for i in range(4)]


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _png(value: int, size: int = 6) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_index_reads_gnu_and_pax_names_as_webdataset_groups_them(tmp_path):
    import webdataset as wds

    long_dir = "d" * 120
    members = [(f"{long_dir}/a.png", _png(10)), (f"{long_dir}/a.cls", b"1"), ("__meta__", b"x"),
               ("b.seg.png", _png(20)), ("b.PNG", _png(30)), ("b.cls", b"0"), ("c.jpg", _png(40)), ("c.cls", b"2")]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = _tar(tmp_path / f"s{fmt}.tar", members, fmt)
        assert [m[0] for m in tar_members(str(path), "s")] == [m[0] for m in members]
        ds = _build("webdataset", {"shards": str(path), "val_shards": str(path)})
        streamed = list(wds.WebDataset(str(path), shardshuffle=False))
        assert [ds.train.path(i).rsplit(":", 1)[1] for i in range(3)] == [f"{long_dir}/a.png", "b.png", "c.jpg"]
        assert [s["__key__"] for s in streamed] == [f"{long_dir}/a", "b", "c"]
        assert [int(ds.train[i][0][0, 0, 0]) for i in range(3)] == [10, 30, 40]  # b: the .png member, not seg.png
        assert ds.train.targets == [1, 0, 2] and ds.class_names == ["0", "1", "2"]
    picked = _build("webdataset", {"shards": str(path), "val_shards": str(path), "image_key": "seg.png;jpg"},
                    on_error="skip")
    assert len(picked.train) == 2 and picked.train.skipped == 1 and "no image member" in picked.train.problems[0][1]


def test_bad_shards_and_bad_samples(tmp_path):
    good = _tar(tmp_path / "good.tar", [("a.png", _png(1)), ("a.cls", b"0"), ("b.png", _png(2)), ("b.cls", b"1")])
    with pytest.raises(PlugtrainError, match="train shard '.*/nope-1.tar' does not exist"):
        _build("webdataset", {"shards": str(tmp_path / "nope-{1..2}.tar")})
    import gzip

    (tmp_path / "zipped.tar").write_bytes(gzip.compress(good.read_bytes()))
    with pytest.raises(PlugtrainError, match="a compressed shard; random access needs an uncompressed .tar"):
        _build("webdataset", {"shards": str(tmp_path / "zipped.tar")})
    (tmp_path / "cut.tar").write_bytes(good.read_bytes()[:700])
    with pytest.raises(PlugtrainError, match="truncated tar"):
        _build("webdataset", {"shards": str(tmp_path / "cut.tar")})
    (tmp_path / "junk.tar").write_bytes(os.urandom(2048))
    with pytest.raises(PlugtrainError, match="not a tar file"):
        _build("webdataset", {"shards": str(tmp_path / "junk.tar")})
    with pytest.raises(PlugtrainError, match="without plugtrain-shards.json"):
        _build("webdataset", {"shards": str(tmp_path)})

    bad = _tar(tmp_path / "bad.tar", [("a.png", _png(1)), ("a.cls", b"0"), ("b.png", _png(2)),  # b: no label
                                      ("c.png", b"not a png"), ("c.cls", b"1"), ("d.png", _png(3)), ("d.cls", b"x")])
    with pytest.raises(PlugtrainError, match=r"bad.tar:b: no .cls member .* \(and 1 more bad samples\)"):
        _build("webdataset", {"shards": str(bad), "val_shards": str(good)})
    ds = _build("webdataset", {"shards": str(bad), "val_shards": str(good), "class_names": ["p", "q"]},
                on_error="skip")
    assert len(ds.train) == 2 and ds.train.skipped == 2
    assert [w for w, _ in ds.train.problems] == [f"{bad}:b", f"{bad}:d"]
    with pytest.raises(SampleError) as caught:  # a corrupt image: at read time, naming shard:key.ext
        ds.train[1]
    assert caught.value.path == f"{bad}:c.png" and "not a readable image" in caught.value.reason
    with pytest.raises(PlugtrainError, match="label 1 out of range: 1 classes"):
        _build("webdataset", {"shards": str(good), "val_shards": str(good), "class_names": ["only"]})
