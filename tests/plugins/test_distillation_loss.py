"""Knowledge distillation (issue 25 item 6): the ``Distillation`` loss from a finished teacher run.

One teacher (timm ``test_resnet`` on scikit-learn's digits at 16x16, trained here once per module) is distilled into
the tiny spec's ``test_efficientnet``. Real runs through the in-process CLI: the teacher is used and changes
training, it is never in the student's checkpoint or optimizer, stop + resume equals an uninterrupted run, and
``check`` / ``train`` refuse a teacher that cannot be used (exit 2, the key's file:line:col, no run directory).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny_spec
from helpers_faults import assert_same_training_state, load

EPOCHS, STEPS = 2, 3
CONSTANT_LR = 'name = "StepLR"\nstep_size = 1000'  # the lr does not depend on run.epochs: a resume may add epochs


def _spec(root: Path, name: str, loss: str = 'name = "CrossEntropy"', epochs: int = EPOCHS, **options) -> Path:
    path = tiny_spec(root, name, root / "runs", epochs=epochs, steps=STEPS, **options)
    text = path.read_text().replace('name = "CrossEntropy"', loss)
    text = text.replace('name = "CosineAnnealingLR"', CONSTANT_LR)
    path.write_text(text)
    return path


def _distil(teacher: str, extra: str = "") -> str:
    return f'name = "Distillation"\nteacher = "{teacher}"\ntemperature = 2.0\nalpha = 0.7\n{extra}'


@pytest.fixture(scope="module")
def root(tmp_path_factory, one_torch_thread) -> Path:
    """A folder with a finished teacher run, ``runs/teacher`` (``test_resnet``, 2 epochs)."""
    root = tmp_path_factory.mktemp("distil")
    spec = tiny_spec(root, "teacher", root / "runs", epochs=2, steps=6, backbone="test_resnet", batch_size=32)
    assert cli("train", spec) == 0
    return root


def test_teacher_is_used_never_saved_nor_trained(root):
    """In process: the loss runs the teacher on the inputs (the soft term changes the value and the gradient), the
    teacher stays in eval mode without gradients, and it is outside state_dict() and parameters()."""
    from plugtrain.core.registry import get_registry
    from plugtrain.core.runtime.rundir import checking_spec

    with checking_spec(root / "student.toml"):  # the teacher is relative to the spec's folder
        loss = get_registry().get("losses", "Distillation").build({"teacher": "runs/teacher", "alpha": 0.5},
                                                                   num_classes=10)
    assert loss.state_dict() == {} and list(loss.parameters()) == []
    loss.train()
    assert not loss.teacher.training and not any(p.requires_grad for p in loss.teacher.parameters())
    torch.manual_seed(0)
    images, targets = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    logits = torch.randn(4, 10, requires_grad=True)
    hard = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.equal(loss(logits, targets), hard)  # no inputs (the validation loss): the hard loss alone
    with_teacher = loss(logits, targets, inputs=images)
    assert loss.teacher_calls == 1 and not torch.allclose(with_teacher, hard)
    with torch.no_grad():
        t = loss.teacher(images).float()
    soft = torch.nn.functional.kl_div(torch.log_softmax(logits / 4.0, -1), torch.softmax(t / 4.0, -1),
                                      reduction="batchmean") * 16.0
    assert torch.allclose(with_teacher, 0.5 * hard + 0.5 * soft, atol=1e-5)  # temperature 4 by default
    with_teacher.backward()
    assert logits.grad is not None and not any(p.grad is not None for p in loss.teacher.parameters())


def test_distilled_run_resumes_exactly_and_keeps_the_teacher_out(root):
    """A distilled run stopped after epoch 1 and resumed to epoch 2 equals the uninterrupted run bitwise; its
    checkpoints hold the student only and its optimizer the student's parameters only; it trains differently from
    the same student without a teacher."""
    whole = _spec(root, "whole", _distil("runs/teacher"))
    assert cli("train", whole) == 0
    part = _spec(root, "part", _distil("runs/teacher"), epochs=1)
    assert cli("train", part) == 0
    assert cli("train", part, "--resume", "auto", "--set", f"run.epochs={EPOCHS}") == 0
    assert_same_training_state(root / "runs/whole/checkpoints/last.pt", root / "runs/part/checkpoints/last.pt")

    alone = _spec(root, "alone")
    assert cli("train", alone) == 0
    distilled, plain = load(root / "runs/whole/checkpoints/last.pt"), load(root / "runs/alone/checkpoints/last.pt")
    assert distilled["model"].keys() == plain["model"].keys()  # the student's weights and nothing of the teacher
    assert distilled["loss"] == {} and not any("teacher" in k for k in distilled["model"])
    sizes = lambda s: sorted(len(g["params"]) for g in s["optimizers"][0]["param_groups"])  # noqa: E731
    assert sizes(distilled) == sizes(plain)
    first = next(iter(plain["model"]))
    assert not torch.equal(distilled["model"][first], plain["model"][first])  # the teacher changed the training


def _written_at(err: str, spec: Path, key: str) -> None:
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if text.startswith(f"{key} ="))
    assert f"{spec}:{line}:" in err and f"loss.{key}" in err and "Traceback" not in err, err


def test_check_refuses_unusable_teachers(root, cli_run, tmp_path, monkeypatch):
    """A missing folder, a file, a run that did not finish, hub weights not in an offline cache, the loss with a
    non-classification task: each one line at the key, exit 2."""
    (tmp_path / "runs").mkdir()
    unfinished = tmp_path / "runs" / "unfinished"
    shutil.copytree(root / "runs" / "teacher", unfinished)
    state = load(unfinished / "checkpoints" / "last.pt")
    state.update(epoch=1, batch_in_epoch=0)  # what an interrupted run leaves
    torch.save(state, unfinished / "checkpoints" / "last.pt")
    (tmp_path / "notes.txt").write_text("x")
    cases = {"runs/nope": "no such run directory", "notes.txt": "not a run directory",
             "runs/unfinished": "not a finished run (stopped at epoch 1 of 2)",
             "hf-hub:someone/teacher": "HF_HUB_OFFLINE is set"}
    _offline_hub(monkeypatch, tmp_path / "hub")
    for teacher, message in cases.items():
        spec = _spec(tmp_path, "student", _distil(teacher))
        got = cli_run("check", spec)
        assert got.returncode == 2 and message in got.stderr, (teacher, got.stderr)
        _written_at(got.stderr, spec, "teacher")
    spec = _spec(tmp_path, "student", _distil(str(root / "runs" / "teacher")))
    assert cli_run("check", spec).returncode == 0
    got = cli_run("check", spec, "--set", 'run.task="regression"')
    assert got.returncode == 2 and "fits classification runs" in got.stderr


def test_train_refuses_a_teacher_of_other_classes(root, cli_run, tmp_path):
    """A teacher of 10 classes for a run of 3 (data.class_subset): exit 2 before the run directory exists."""
    spec = _spec(tmp_path, "student", _distil(str(root / "runs" / "teacher")))
    got = cli_run("train", spec, "--set", 'data.class_subset=["0", "1", "2"]')
    assert got.returncode == 2 and "outputs 10 classes but this run's dataset has 3" in got.stderr, got.stderr
    assert not (tmp_path / "runs" / "student").exists()


def _offline_hub(monkeypatch, cache: Path) -> None:
    """huggingface_hub reading the cache ``cache`` only (HF_HUB_OFFLINE), in this process."""
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(cache))):
        monkeypatch.setattr(f"huggingface_hub.constants.{name}", value)


def test_a_hub_teacher_loads_offline_from_the_cache(tmp_path, monkeypatch):
    """``teacher = "hf-hub:ORG/NAME"``: timm's model from the Hugging Face cache with HF_HUB_OFFLINE set, its
    weights exactly those in the cache; ``check`` accepts it; a teacher of other classes is refused."""
    from helpers_hub import hub_cache, perturbed_model

    from plugtrain.core.registry import get_registry

    model = perturbed_model("test_resnet", in_chans=1, num_classes=10)
    hub_cache(tmp_path / "hf", "plugtrain-test/teacher", model)
    _offline_hub(monkeypatch, tmp_path / "hf" / "hub")
    comp = get_registry().get("losses", "Distillation")
    loss = comp.build({"teacher": "hf-hub:plugtrain-test/teacher"}, num_classes=10)
    got = loss.teacher.state_dict()
    assert got.keys() == model.state_dict().keys()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    assert not loss.teacher.training and loss.state_dict() == {}
    spec = _spec(tmp_path, "student", _distil("hf-hub:plugtrain-test/teacher"))
    assert cli("check", spec) == 0
    from plugtrain.core.errors import PlugtrainError

    with pytest.raises(PlugtrainError, match="outputs 10 classes but this run's dataset has 3"):
        comp.build({"teacher": "hf-hub:plugtrain-test/teacher"}, num_classes=3)
