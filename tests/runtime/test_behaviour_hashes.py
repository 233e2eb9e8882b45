"""Behaviour is unchanged: fixed-seed CPU runs end in a ``last.pt`` whose every tensor is bitwise the recorded one.

The runs (a shortened quickstart; EMA + SWA + mixup + accumulation + clipping; SAM; two processes under torchrun;
FSDP2 under torchrun) cover every branch of the training step. ``behaviour_hashes.json`` holds the SHA-256 of each
tensor of the final ``last.pt`` (model, loss, optimizers, scheduler, scaler, EMA, SWA, RNG states). A change of
behaviour on purpose re-records them (``python tests/runtime/test_behaviour_hashes.py --record``) in the same commit and says
why. The hashes hold for one CPU instruction set (recorded with them): elsewhere the test is skipped, saying so.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest when run as a script

from conftest import QUICKSTART, run_cli, run_torchrun, tiny_spec  # noqa: E402

RECORD = Path(__file__).resolve().parent / "behaviour_hashes.json"

MIXUP = """
ema = true
ema_decay = 0.9
grad_accum = 2
clip_grad_norm = 1.0
swa = true
swa_start_epoch = 1

[mixup]
mixup_alpha = 0.4
cutmix_alpha = 1.0
"""
SAM = """
[optimizer]
name = "SAM"
base = "SGD"
rho = 0.05
lr = 0.05
"""


def _spec(tmp: Path, name: str) -> tuple[Path, list[str]]:
    """The spec of run ``name`` and its extra ``--set`` overrides."""
    if name == "quickstart":
        sets = ["run.epochs=2", "trainer.max_steps_per_epoch=4", "data.num_workers=0", f'run.output_dir="{tmp}"']
        return QUICKSTART, [a for s in sets for a in ("--set", s)]
    if name == "ema-mixup-accum":
        return tiny_spec(tmp, name, tmp, steps=4, extra=MIXUP), []
    if name == "sam":
        path = tiny_spec(tmp, name, tmp, steps=3)
        text = path.read_text().replace('[optimizer]\nname = "AdamW"\nlr = 3e-3\nweight_decay = 0.05\n', "")
        path.write_text(text + SAM)
        return path, []
    if name in ("ddp-2", "fsdp-2"):
        extra = 'strategy = "fsdp"' if name == "fsdp-2" else ""
        return tiny_spec(tmp, name, tmp, steps=3, batch_size=8, extra=extra), []
    raise KeyError(name)


RUNS = ("quickstart", "ema-mixup-accum", "sam", "ddp-2", "fsdp-2")


def tensor_hashes(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{path: sha256}`` of every tensor in a nested checkpoint (dicts, lists)."""
    import torch

    out: dict[str, str] = {}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out[prefix] = f"{hashlib.sha256(data).hexdigest()[:16]}:{t.dtype}:{tuple(obj.shape)}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(tensor_hashes(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(tensor_hashes(v, f"{prefix}[{i}]"))
    return out


def run_and_hash(name: str, tmp: Path) -> dict[str, str]:
    import torch

    spec, sets = _spec(tmp, name)
    if name.endswith("-2"):
        proc = run_torchrun(2, "train", spec, *sets, timeout=500)
    else:
        proc = run_cli("train", spec, *sets, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = tmp / ("quickstart" if name == "quickstart" else name) / "checkpoints" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    keep = ("model", "loss", "optimizers", "scheduler", "swa_scheduler", "scaler", "ema", "swa", "rng")
    return tensor_hashes({k: state.get(k) for k in keep})


def cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_fixed_seed_run_gives_the_recorded_tensors(name, tmp_path):
    record = json.loads(RECORD.read_text())
    if record["cpu_capability"] != cpu_capability():
        pytest.skip(f"hashes recorded on a {record['cpu_capability']} CPU; this one is {cpu_capability()}")
    got = run_and_hash(name, tmp_path)
    want = record["runs"][name]
    assert got.keys() == want.keys()
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ, e.g. {differ[:5]}"


if __name__ == "__main__":  # python tests/runtime/test_behaviour_hashes.py --record [RUN...]
    import tempfile

    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(RUNS)
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {"runs": {}}
    record["cpu_capability"] = cpu_capability()
    for n in names:
        with tempfile.TemporaryDirectory() as d:
            record["runs"][n] = run_and_hash(n, Path(d))
            print(n, len(record["runs"][n]), "tensors", flush=True)
    if "--record" in sys.argv:
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    else:
        print(json.dumps(record)[:2000])
