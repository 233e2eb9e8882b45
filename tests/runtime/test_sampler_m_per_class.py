"""The m-per-class sampler (``data.sampler = "m_per_class"``) alone and split across DDP ranks.

Each epoch's order is made of groups of ``m`` samples of one class in a shuffled group order; the global batch of
``batch_size x world_size`` is cut into per-rank batches of ``batch_size``, so with ``batch_size % m == 0`` (which
``plugtrain check`` demands) every rank's batch holds whole groups, the ranks never share a sample within a batch, and
the ranks' batches together are the single-process run's global batch.
"""

from __future__ import annotations

import collections

from conftest import cli, tiny_spec

from plugtrain.core.runtime.loader import GlobalBatchSampler, m_per_class_order

# 6 classes of uneven size, one smaller than m
TARGETS = [c for c, n in enumerate([9, 12, 8, 3, 16, 10]) for _ in range(n)]
M, BATCH = 4, 8


def _samplers(world: int, seed: int = 3, epoch: int = 0) -> list[GlobalBatchSampler]:
    order = m_per_class_order(TARGETS, M)
    out = []
    for rank in range(world):
        s = GlobalBatchSampler(len(TARGETS), BATCH, seed, rank, world, order=order)
        s.set_epoch(epoch)
        out.append(s)
    return out


def _groups_of_m(batch: list[int]) -> bool:
    return all(len({TARGETS[i] for i in batch[k:k + M]}) == 1 for k in range(0, len(batch), M))


def test_every_batch_is_made_of_groups_of_m_samples_of_a_class():
    (single,) = _samplers(1)
    batches = [[i for _, i in b] for b in single]
    assert len(batches) == single.batches_per_epoch() > 3
    for b in batches:
        assert len(b) == BATCH and _groups_of_m(b)
    counts = collections.Counter(i for b in batches for i in b)
    assert max(counts.values()) <= 2  # a sample repeats only to fill the group of a class smaller than m


def test_ranks_take_whole_groups_and_together_make_the_global_batch():
    two = _samplers(2)
    (one,) = _samplers(1)
    one.batch_size = 2 * BATCH  # one process with the doubled batch: the same global batches
    per_rank = [[[i for _, i in b] for b in s] for s in two]
    assert len(per_rank[0]) == len(per_rank[1]) == one.batches_per_epoch()
    for b0, b1, g in zip(*per_rank, ([i for _, i in b] for b in one), strict=True):
        assert _groups_of_m(b0) and _groups_of_m(b1)
        assert b0 + b1 == g
        assert not set(b0) & set(b1) or {TARGETS[i] for i in set(b0) & set(b1)} == {3}  # only the padded class


def test_the_order_is_a_function_of_seed_and_epoch():
    def order(seed: int, epoch: int) -> list[list[int]]:
        (s,) = _samplers(1, seed, epoch)
        return [[i for _, i in b] for b in s]

    assert order(3, 0) == order(3, 0)
    assert order(3, 0) != order(3, 1)
    assert order(3, 0) != order(4, 0)


def test_check_wants_the_batch_to_hold_whole_groups(tmp_path, capsys):
    spec = tiny_spec(tmp_path, batch_size=10)
    assert cli("check", spec, "--set", 'data.sampler="m_per_class"', "--set", "data.m_per_class=4") == 2
    err = capsys.readouterr().err
    assert "data.batch_size (10) must be a multiple of data.m_per_class (4)" in err
    assert f"{spec}:" in err  # located in the file
    assert cli("check", spec, "--set", 'data.sampler="m_per_class"', "--set", "data.m_per_class=5") == 0
