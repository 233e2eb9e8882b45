"""The loader's seeding contract: a sample's augmentation is a pure function of ``(seed, epoch, index, view)``.

The pipeline's generators are re-seeded in place (one PCG64 and one ``random.Random`` per dataset and process,
attached once with ``set_random_state``); these tests show that this still does not depend on the order samples
are drawn in, on the number of workers, or on another dataset sharing the same pipeline object, and that nested
compositions draw from the attached generators. Real albumentations pipelines, a real DataLoader with workers.
"""

from __future__ import annotations

import numpy as np
import pytest

NESTED = """[augmentations]
resize = false
train = [
  { name = "OneOf", p = 0.9, transforms = [
    { name = "Sequential", p = 1.0, transforms = [
      { name = "HorizontalFlip", p = 0.5 },
      { name = "SomeOf", n = 1, replace = false, p = 1.0, transforms = [
        { name = "VerticalFlip", p = 1.0 },
        { name = "Transpose", p = 1.0 },
      ] },
    ] },
    { name = "Affine", rotate = [-40, 40], translate_percent = [-0.2, 0.2], p = 1.0 },
  ] },
  { name = "GaussNoise", std_range = [0.05, 0.2], p = 0.5 },
  { name = "CoarseDropout", num_holes_range = [1, 3], hole_height_range = [2, 4], hole_width_range = [2, 4], p = 0.5 },
]
"""


def _spec(tmp_path):
    from plugtrain.core.spec import load_spec

    path = tmp_path / "loader.toml"
    path.write_text('[run]\nname = "loader"\nseed = 7\n\n[data]\ndataset = "sklearn-digits"\nimage_size = 16\n\n'
                    '[backbone]\nname = "resnet18"\nin_chans = 1\n\n[loss]\nname = "CrossEntropy"\n\n'
                    '[optimizer]\nname = "AdamW"\n\n' + NESTED, encoding="utf-8")
    return load_spec(path)


def _images(n: int = 24) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (12, 12, 1), dtype=np.uint8), i % 3) for i in range(n)]


def _dataset(tmp_path, split=None, transform=None, seed: int = 7, views: int = 1):
    from plugtrain.core.runtime.build import build_transform
    from plugtrain.core.runtime.loader import AugmentedDataset

    transform = transform if transform is not None else build_transform(_spec(tmp_path), "train", 1)
    return AugmentedDataset(split if split is not None else _images(), transform, seed, "train", views)


def test_nested_compositions_draw_from_the_attached_generators(tmp_path):
    data = _dataset(tmp_path)
    data[(0, 0)]
    gen, py = data._rngs
    stack = [data.transform]
    seen = 0
    while stack:
        t = stack.pop()
        assert t.random_generator is gen and t.py_random is py, type(t).__name__
        seen += 1
        stack.extend(getattr(t, "transforms", []))
    assert seen >= 9  # Compose, OneOf, Sequential, SomeOf and every leaf transform


def test_a_sample_depends_on_its_key_only(tmp_path):
    """Any drawing order, a fresh dataset, a second epoch: the same key gives the same pixels, other keys others."""
    keys = [(e, i) for e in (0, 1) for i in range(24)]
    first = {k: _dataset(tmp_path)[k][0].numpy() for k in keys}
    shuffled = _dataset(tmp_path)
    for j in np.random.default_rng(1).permutation(len(keys)):
        k = keys[j]
        np.testing.assert_array_equal(shuffled[k][0].numpy(), first[k], err_msg=str(k))
    assert len({v.tobytes() for v in first.values()}) > 40  # the augmentation does vary with epoch and index
    other_seed = _dataset(tmp_path, seed=8)
    assert sum(np.array_equal(other_seed[k][0].numpy(), first[k]) for k in keys) < 10


def test_views_differ_and_are_reproducible(tmp_path):
    a, b = _dataset(tmp_path, views=2), _dataset(tmp_path, views=2)
    differ = 0
    for i in range(12):
        (v0, v1), _ = a[(0, i)]
        (w0, w1), _ = b[(0, i)]
        assert np.array_equal(v0.numpy(), w0.numpy()) and np.array_equal(v1.numpy(), w1.numpy())
        differ += not np.array_equal(v0.numpy(), v1.numpy())
    assert differ >= 6


def test_datasets_sharing_one_pipeline_keep_their_own_streams(tmp_path):
    """val and test share the val pipeline object: interleaved, each still gives what it gives alone."""
    from plugtrain.core.runtime.build import build_transform

    transform = build_transform(_spec(tmp_path), "train", 1)
    images = _images()
    alone_a = [_dataset(tmp_path, images)[(0, i)][0].numpy() for i in range(8)]
    alone_b = [_dataset(tmp_path, images[::-1], seed=3)[(0, i)][0].numpy() for i in range(8)]
    a = _dataset(tmp_path, images, transform)
    b = _dataset(tmp_path, images[::-1], transform, seed=3)
    for i in range(8):
        np.testing.assert_array_equal(a[(0, i)][0].numpy(), alone_a[i])
        np.testing.assert_array_equal(b[(0, i)][0].numpy(), alone_b[i])


@pytest.mark.slow
def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    """The trainer's own loader (sampler, dataset, collate) over two epochs: 0, 1 and 2 workers, identical batches."""
    import torch

    from plugtrain.core.runtime.loader import GlobalBatchSampler, make_loader

    def batches(workers: int) -> list[torch.Tensor]:
        data = _dataset(tmp_path)
        sampler = GlobalBatchSampler(len(data), 5, seed=7)
        loader = make_loader(data, sampler, workers, "raise", seed=7, persistent_workers=False)
        out = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            out += [b["images"] for b in loader]
        return out

    reference = batches(0)
    assert reference[0].dtype == torch.uint8 and tuple(reference[0].shape) == (5, 1, 12, 12)
    for workers in (1, 2):
        got = batches(workers)
        assert len(got) == len(reference) == 8
        for x, y in zip(got, reference, strict=True):
            assert torch.equal(x, y), workers
