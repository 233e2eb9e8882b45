"""The sweep's objective check knows the metrics a run reports as the run builds them: the task's
``required_metrics`` come first in a ``[[metrics]]`` list that lacks them (not only the ``always:<task>`` role)."""

from __future__ import annotations

from conftest import REPO

from plugtrain.core.spec import load_spec
from plugtrain.sweep.space import metric_names


def test_the_objective_may_be_a_metric_the_task_requires(tmp_path):
    text = (REPO / "specs" / "multilabel.toml").read_text()
    text = text.replace('[[metrics]]\nname = "map"\n', '[[metrics]]\nname = "f1_micro"\n')
    text = text.replace('primary_metric = "val/map"', 'primary_metric = "val/f1_micro"')
    spec_file = tmp_path / "ml.toml"
    spec_file.write_text(text)
    data = tmp_path / "data" / "multilabel"
    data.mkdir(parents=True)
    for name in ("train.csv", "val.csv"):
        (data / name).write_text("path,labels\na.png,cat\n")
    keys = metric_names(load_spec(str(spec_file)))
    assert keys is not None and keys.index("val/map") < keys.index("val/f1_micro"), keys  # map: multilabel's own
