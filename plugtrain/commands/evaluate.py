"""``plugtrain evaluate RUN_DIR [--checkpoint best|last|PATH] [--weights model|ema|swa] [--split val|test] [--json]``.

The loss and metrics of one set of weights of a finished run's checkpoint on its val or test split, computed in one
process with the loop's own evaluation; printed and written to ``RUN_DIR/eval-<split>.json``.

``--weights`` chooses the trained model, its EMA (``trainer.ema``) or its SWA average (``trainer.swa``); the
default is what ``best.pt`` was chosen by (the EMA when the run's best metric was a ``val_ema/`` one, else the
model). The metrics are reported as ``<split>/<metric>`` whichever the weights (``val/accuracy`` of the EMA weights
equals the run's ``val_ema/accuracy`` of that epoch), and the record says which: ``"weights": "ema"``. The
checkpoint defaults to ``best``, ``last`` for SWA (its batch-norm statistics are recomputed at the end of training
and saved in ``last.pt`` only).

``--tta`` (or ``--tta-views flip|flips4``) also scores the test-time augmented model: each sample's outputs of the identity and its
horizontal flip (``flips4``: and its vertical and double flips) merged by the run's task (``Task.tta_merge``: mean
softmax / sigmoid probabilities, mean values, mean L2-normalised embeddings); the record gains ``"tta": {"views":
"flip", "metrics": {"val/accuracy": ...}}`` beside the plain ``"metrics"``, and the table ``tta/val/...`` rows.
"""

from __future__ import annotations

import functools
import json

from plugtrain.commands._finished_run import build_for_eval
from plugtrain.core import console
from plugtrain.core.errors import PlugtrainError, first_line
from plugtrain.core.runtime import checkpoint as ckpt
from plugtrain.core.runtime.precision import autocast
from plugtrain.inference import (
    check_weights,
    checkpoint_path,
    default_weights,
    load_weights,
    local_env,
    open_run,
    tta_merger,
    tta_module,
)


def run(run_dir: str, *, checkpoint: str | None = None, split: str = "val", weights: str | None = None,
        as_json: bool = False, tta: str | None = None) -> int:
    """Evaluate ``weights`` of ``checkpoint`` of ``run_dir`` on ``split`` (and with ``tta``, its test-time augmented
    outputs too); exit code 0."""
    from plugtrain.core.runtime.evaluator import OutputCollector, evaluate_model
    from plugtrain.core.runtime.loader import ShardedBatchSampler, make_loader
    from plugtrain.core.runtime.step import ModelInput

    check_weights(weights)
    root, spec = open_run(run_dir)
    merge = None if tta is None else tta_merger(spec.task_object, spec.run.task, tta)  # before any work
    path = checkpoint_path(root, checkpoint, weights)
    state = ckpt.load(path)
    chosen = weights or default_weights(state)
    env = local_env(spec)
    built = build_for_eval(spec, env)
    data = built.val_data if split == "val" else built.test_data
    if data is None:
        raise PlugtrainError(f"dataset {spec.data.dataset.name!r} of {run_dir} has no {split} split")
    model = built.backbone.to(env.device)
    criterion = built.criterion.to(env.device)
    load_weights(model, state, chosen, path, spec)
    try:
        criterion.load_state_dict(state["loss"])
    except (RuntimeError, KeyError) as exc:
        raise PlugtrainError(f"{path}: does not fit the loss of {root / 'spec.toml'}: {first_line(exc)}") from None
    d = spec.data
    loader = make_loader(data, ShardedBatchSampler(len(data), d.val_batch_size or d.batch_size), d.num_workers,
                         d.on_error, spec.run.seed, persistent_workers=False, prefetch_factor=d.prefetch_factor)
    amp = functools.partial(autocast, env.device.type, spec.trainer.precision)
    metrics = {k: m.to(env.device) for k, m in built.metrics.items()}
    task = spec.task_object
    report_outputs = getattr(task, "report_outputs", None)  # per-class figures, confusion matrix, residuals
    collector = OutputCollector() if callable(report_outputs) else None
    if collector is not None:
        metrics[" outputs"] = collector  # a key no metric has; it adds no scalar
    model_input = ModelInput.for_spec(spec, built.in_chans, env.device)
    results, skipped = evaluate_model(model, criterion, loader, metrics, model_input, amp, env, split)
    record = {"run_dir": str(root), "checkpoint": str(path), "weights": chosen, "epoch": state.get("epoch"),
              "global_step": state.get("global_step"), "split": split, "samples": len(data), "skipped": skipped,
              "metrics": results}
    if merge is not None:  # the same samples again, each scored by its views' merged outputs
        metrics.pop(" outputs", None)
        tta_results, _ = evaluate_model(tta_module(model, merge, tta), criterion, loader, metrics, model_input, amp,
                                        env, split)
        record["tta"] = {"views": tta, "metrics": tta_results}
    report = getattr(task, "report", None)  # what the run's task adds (per-class figures by name)
    if callable(report):
        record.update(report(dict(results), list(built.class_names)))
    if collector is not None and collector.outputs is not None:
        record.update(report_outputs(collector.outputs, collector.targets, list(built.class_names), root, split))
    out = root / f"eval-{split}.json"
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if as_json:
        console.print_json(record)
    else:
        console.echo(f"{root.name}: {path.name} (epoch {state.get('epoch')}), {chosen} weights, on {split} "
                     f"({len(data)} samples)")
        rows = [(k, f"{v:.4f}") for k, v in results.items()]
        rows += [(f"tta/{k}", f"{v:.4f}") for k, v in record.get("tta", {}).get("metrics", {}).items()]
        console.table("metrics", ["metric", "value"], rows)
        console.echo(f"written to {out}")
    return 0
