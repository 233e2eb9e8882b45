"""``plugtrain check`` with a fresh catalog imports neither torch nor a plugin's library: signatures come from the
catalog, the task too, and a pure plugin validator's verdict (albumentations' own parameter schema) is stored beside
the catalog, keyed by the parameters; its messages are the live registry's, word for word.

Commands run as real child processes, with the session's cache folder (usually warm by then).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICKSTART, subprocess_env

HEAVY = {"torch", "timm", "albumentations", "cv2", "numpy"}
GOOD_AUG = '{ name = "Affine", translate_percent = [-0.08, 0.08], rotate = [-10, 10], p = 0.7 }'
BAD_AUG = GOOD_AUG + ', { name = "GaussNoise", std_range = [0.5, 0.1] }'  # albumentations' schema: low > high


def _check(env: dict[str, str], spec: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``plugtrain check SPEC`` with ``-X importtime``: the process and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "plugtrain", "check", str(spec)],
                          capture_output=True, text=True, timeout=600, env=env)
    tops = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:")}
    proc.stderr = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    return proc, tops


def _spec(tmp_path: Path, name: str, augs: str) -> Path:
    text = QUICKSTART.read_text()
    assert GOOD_AUG in text
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace(GOOD_AUG, augs).replace('output_dir = "runs"', f'output_dir = "{tmp_path}/runs"'))
    return path


@pytest.mark.slow
def test_check_with_a_fresh_catalog_imports_no_torch_and_stored_verdicts_say_what_the_live_check_says(
        tmp_path: Path) -> None:
    env = subprocess_env()
    good, bad = _spec(tmp_path, "good", GOOD_AUG), _spec(tmp_path, "bad", BAD_AUG)

    first, _ = _check(env, good)  # builds the catalog (cold) and stores Affine's verdict
    assert first.returncode == 0 and "OK" in first.stdout, first.stderr[-2000:]
    again, tops = _check(env, good)
    assert again.returncode == 0 and "OK" in again.stdout, again.stderr[-2000:]
    assert not HEAVY & tops, sorted(HEAVY & tops)

    computed, tops = _check(env, bad)  # a new verdict: albumentations' own schema runs, as without a catalog
    assert "albumentations" in tops
    stored, tops = _check(env, bad)
    assert not HEAVY & tops, sorted(HEAVY & tops)
    line = next(i for i, s in enumerate(bad.read_text().splitlines(), 1) if "GaussNoise" in s)
    assert f"{bad}:{line}:" in computed.stderr
    assert "augmentations.train[1].std_range: First value should be less than the second" in computed.stderr
    for proc in (computed, stored):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert stored.stderr == computed.stderr


def test_a_run_that_is_not_deterministic_does_not_import_torch_inductor() -> None:
    """``torch.use_deterministic_algorithms(False)`` imports torch._inductor and dynamo (seconds before the first
    step): plugtrain calls it only to undo an earlier True."""
    code = ("import sys, types, torch\n"
            "from plugtrain.core.runtime.session import configure_torch\n"
            "spec = types.SimpleNamespace(run=types.SimpleNamespace(deterministic=False))\n"
            "configure_torch(spec)\n"
            "assert not torch.are_deterministic_algorithms_enabled()\n"
            "print('inductor' if 'torch._inductor' in sys.modules else 'none')\n"
            "configure_torch(types.SimpleNamespace(run=types.SimpleNamespace(deterministic=True)))\n"
            "assert torch.are_deterministic_algorithms_enabled()\n"
            "configure_torch(spec)\n"
            "assert not torch.are_deterministic_algorithms_enabled()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "none"
