"""Metrics: the metric-learning retrieval metrics, and their (and SupCon's) behaviour across ranks with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from plugtrain.core.registry import get_registry, reset_registry


def metric(name: str):
    return get_registry().get("metrics", name).build({}, num_classes=3, task="metric_learning")


def test_all_metrics_are_listed():
    reset_registry()
    names = {c.name for c in get_registry().components("metrics")}
    assert {"accuracy", "top5", "f1_macro", "mae", "rmse", "r2", "precision_at_1", "recall_at_1", "map_at_r"} <= names


def test_retrieval_metrics_on_a_hand_computed_case():
    # 1-D embeddings on a circle-free line: cosine similarity only sees directions, so use 2-D unit vectors
    angles = torch.tensor([0.0, 0.1, 0.3, 1.2, 1.3, 1.45])
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    # nearest neighbours (by angle): 0->1 (hit), 1->0 (hit), 2->1 (miss), 3->4 (miss), 4->3 (miss), 5->4 (hit)
    p1 = metric("precision_at_1")
    p1.update(emb[:3], labels[:3])
    p1.update(emb[3:], labels[3:])
    assert float(p1.compute()) == pytest.approx(3 / 6)
    r1 = metric("recall_at_1")
    r1.update(emb, labels)
    assert float(r1.compute()) == pytest.approx(3 / 6)
    # MAP@R, R = 2 for every query (three per class). Ranked neighbours and AP@R = (1/R) sum_i P(i) rel(i):
    # 0: 1(+) 2(-) -> 1/2     1: 0(+) 2(-) -> 1/2      2: 1(-) 0(-) -> 0
    # 3: 4(-) 5(-) -> 0       4: 3(-) 5(+) -> 1/4      5: 4(+) 3(-) -> 1/2
    m = metric("map_at_r")
    m.update(emb, labels)
    assert float(m.compute()) == pytest.approx((0.5 + 0.5 + 0 + 0 + 0.25 + 0.5) / 6)


def test_retrieval_metrics_separate_good_from_random_embeddings():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(8)
    centres = torch.randn(5, 16, generator=g) * 3
    good = centres[labels] + 0.1 * torch.randn(40, 16, generator=g)
    bad = torch.randn(40, 16, generator=g)
    for name in ("precision_at_1", "map_at_r"):
        a, b = metric(name), metric(name)
        a.update(good, labels)
        b.update(bad, labels)
        assert float(a.compute()) == pytest.approx(1.0)
        assert float(b.compute()) < 0.5


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from plugtrain.core.registry import get_registry

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(6)
    emb = torch.nn.functional.normalize(torch.randn(24, 8, generator=g) + torch.eye(8)[labels] * 1.5, dim=1)
    part = slice(rank * 12, (rank + 1) * 12)
    out = {}
    reg = get_registry()
    for name in ("precision_at_1", "map_at_r"):
        m = reg.get("metrics", name).build({}, num_classes=4, task="metric_learning")
        m.update(emb[part], labels[part])
        out[name] = float(m.compute())
    for name in ("SupCon", "TripletMargin"):
        loss = reg.get("losses", name).build({}, num_classes=4, embedding_dim=8)
        local = emb[part].clone().requires_grad_(True)
        value = loss(local, labels[part])
        value.backward()
        grads = [torch.zeros_like(local) for _ in range(world)]
        dist.all_gather(grads, local.grad)
        out[name] = float(value.detach())
        out[name + "_grad"] = (torch.cat(grads) / world).tolist()  # what DDP's averaging makes of them
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: torch's gloo threads once aborted it ("terminate called ...") in CI
    """
)


@pytest.mark.slow
def test_metrics_and_pair_losses_see_every_rank_under_torchrun(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    result = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(result)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(result.read_text())

    # the same numbers from one process that sees the whole batch
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(6)
    emb = torch.nn.functional.normalize(torch.randn(24, 8, generator=g) + torch.eye(8)[labels] * 1.5, dim=1)
    for name in ("precision_at_1", "map_at_r"):
        m = metric(name)
        m.update(emb, labels)
        assert got[name] == pytest.approx(float(m.compute()))
    for name in ("SupCon", "TripletMargin"):
        loss = get_registry().get("losses", name).build({}, num_classes=4, embedding_dim=8)
        full = emb.clone().requires_grad_(True)
        value = loss(full, labels)
        value.backward()
        assert got[name] == pytest.approx(float(value.detach()), rel=1e-5)
        assert torch.allclose(torch.tensor(got[name + "_grad"]), full.grad, atol=1e-6)
