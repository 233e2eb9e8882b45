"""``plugtrain`` command line: parse arguments, call the command in :mod:`plugtrain.commands`, turn errors into exit
codes (0 done; 2 bad input; 1 a run that failed; 128 + signal number for a run stopped by SIGTERM / SIGINT).
No logic lives here.

The command modules are imported inside :func:`_run`, so that ``--help`` and ``plugtrain list`` stay fast. Plugins'
subcommands (hook ``plugtrain_commands``) come after the built-in ones, and only when the command line may name one:
a built-in command never loads them."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from plugtrain import __version__
from plugtrain.core.hookspecs import KINDS


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors quote the arguments given with control characters escaped."""

    def error(self, message: str):  # noqa: ANN201 - argparse's signature (it does not return)
        from plugtrain.core.errors import printable

        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {printable(message)}\n")


class _Command(_Parser):
    """A subcommand's parser: options may come before, between or after its positionals (``list backbones --json
    'resnet*'``, ``sweep status --json DIR``), as argparse's intermixed parsing reads them; plain parsing binds the
    positionals before the first option and leaves the later ones unrecognized."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        if self._inside:  # the intermixed parse calls back here for its two passes
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _parser(plugins: bool = False) -> argparse.ArgumentParser:
    """The command line's parser; with ``plugins``, the plugins' subcommands too."""
    p = _Parser(
        prog="plugtrain",
        description="Train PyTorch models from a TOML run spec; every component is a plugin.",
    )
    p.add_argument("--version", action="version", version=f"plugtrain {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Command)

    s = sub.add_parser("list", help="list registered components, grouped by kind")
    s.add_argument("kind", nargs="?", metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    s.add_argument("pattern", nargs="?", metavar="PATTERN", help="case-insensitive glob on the name, e.g. 'resnet*'")
    s.add_argument("--json", action="store_true", help="print a JSON array")
    s.add_argument("--pretrained", action="store_true", help="backbones with pretrained weights only, with their tags")

    s = sub.add_parser("show", help="show one component: summary, docstring, parameters")
    s.add_argument("kind", metavar="KIND")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("plugins", help="list plugins (entry points), their hooks and load errors")
    s.add_argument("--json", action="store_true")

    def spec_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("specs", nargs="+", metavar="SPEC", help="TOML run spec file(s)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec value (TOML value syntax); repeatable")

    s = sub.add_parser("check", help="validate run specs without touching data or models")
    spec_args(s)
    s.add_argument("--print", dest="print_resolved", action="store_true", help="print the fully resolved spec")

    sub.add_parser("schema", help="print the JSON Schema of the run spec (plugins included)")

    s = sub.add_parser("weights", help="fill the Hugging Face cache with the pretrained weights specs name")
    s.add_argument("action", choices=["fetch"], help="fetch: download what is not cached (offline: report the cache)")
    spec_args(s)

    s = sub.add_parser("train", help="train from run spec(s), one after another")
    spec_args(s)
    s.add_argument("--resume", metavar="auto|PATH", help="continue from the run's last.pt (auto) or a checkpoint")
    s.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    s.add_argument("--dry-run", action="store_true",
                   help="build everything, save augmented samples, run one batch forward and backward, then exit")
    s.add_argument("--folds", type=int, metavar="K",
                   help="k-fold cross-validation: K runs on stratified, seeded folds of the train split "
                        "(<output_dir>/<name>/fold-<k>/), then the mean and std of every validation metric (cv.json)")

    s = sub.add_parser("lr-find", help="learning-rate range test on a spec's run (or, with --batch-size, a batch-size "
                                       "probe); writes a plot and JSON, never a run directory")
    s.add_argument("spec", metavar="SPEC", help="TOML run spec file")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec value (TOML value syntax); repeatable")
    s.add_argument("--out", metavar="DIR", help="report folder (default <output_dir>/lr-find-<name>, or "
                                                "batch-size-<name>)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier report in the folder")
    s.add_argument("--min-lr", type=float, default=1e-7, help="first lr (default 1e-7)")
    s.add_argument("--max-lr", type=float, default=10.0, help="last lr (default 10)")
    s.add_argument("--steps", type=int, default=100, help="optimizer steps from --min-lr to --max-lr (default 100)")
    s.add_argument("--batch-size", action="store_true",
                   help="probe batch sizes 2, 4, 8, ... (CUDA: until out of memory; CPU: peak RSS per size)")
    s.add_argument("--max-batch-size", type=int, metavar="N", help="--batch-size: the largest to try")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = sub.add_parser("submit", help="train a spec as a SLURM job that survives time limits and preemption")
    s.add_argument("spec", metavar="SPEC")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    from plugtrain.commands import submit as submit_command

    submit_command.add_job_arguments(s)
    s.add_argument("--resume", metavar="auto|PATH")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting it")

    s = sub.add_parser("evaluate", help="evaluate a finished run's checkpoint")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--checkpoint", metavar="best|last|PATH", help="default: best (last with --weights swa)")
    s.add_argument("--weights", choices=["model", "ema", "swa"],
                   help="the trained model, its EMA or its SWA average (default: what best.pt was chosen by)")
    s.add_argument("--split", default="val", choices=["val", "test"])
    s.add_argument("--json", action="store_true")
    s.add_argument("--tta", action="store_const", const="flip",
                   help="test-time augmentation: the image and its horizontal flip, merged by the task")
    s.add_argument("--tta-views", dest="tta", choices=["flip", "flips4"],
                   help="--tta with these views (flips4: also the vertical and the double flip)")

    s = sub.add_parser("predict", help="top-k classes for images, from a finished run or an exported ONNX/pt2 file")
    s.add_argument("run_dir", metavar="RUN_DIR|MODEL.onnx")
    s.add_argument("images", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    s.add_argument("--checkpoint", metavar="best|last|PATH", help="default: best (last with --weights swa)")
    s.add_argument("--weights", choices=["model", "ema", "swa"],
                   help="the trained model, its EMA or its SWA average (default: what best.pt was chosen by)")
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--json", action="store_true")
    s.add_argument("--out", metavar="DIR|FILE.csv|FILE.jsonl",
                   help="a results file (CSV or JSON lines; embeddings in FILE.npy beside it), or a folder for the "
                        "files the task makes of each prediction (a mask PNG)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file, or write into a "
                   "non-empty --out folder replacing same-named files")
    s.add_argument("--batch-size", type=int, help="batch form: images per batch (default: the run's)")
    s.add_argument("--num-workers", type=int, help="batch form: DataLoader workers (default: the run's)")
    s.add_argument("--on-error", choices=["raise", "skip"], default="skip",
                   help="batch form: an unreadable file is listed and skipped (default), or stops with exit 2")
    s.add_argument("--tta", action="store_const", const="flip",
                   help="test-time augmentation: the image and its horizontal flip, merged by the task")
    s.add_argument("--tta-views", dest="tta", choices=["flip", "flips4"],
                   help="--tta with these views (flips4: also the vertical and the double flip)")

    s = sub.add_parser("export", help="export a finished run's model (ONNX, pt2, safetensors), checked against it")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--checkpoint", metavar="best|last|PATH", help="default: best (last with --weights swa)")
    s.add_argument("--format", dest="fmt", default="onnx", choices=["onnx", "pt2", "safetensors"])
    s.add_argument("--weights", choices=["model", "ema", "swa"],
                   help="the trained model, its EMA or its SWA average (default: the EMA when the run kept one)")
    s.add_argument("--output", metavar="PATH", help="default: RUN_DIR/export/<checkpoint>-<weights>.<format>")
    s.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest absolute difference allowed between the exported and the eager model")
    s.add_argument("--json", action="store_true", help="print the sidecar JSON")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file and its sidecar")

    s = sub.add_parser("shards", help="write WebDataset .tar shards of a data set (a spec's, a folder, a csv)")
    s.add_argument("source", metavar="SPEC|FOLDER|CSV", help="a run spec (its [data]), an image folder or a manifest")
    s.add_argument("--out", required=True, metavar="DIR", help="where the shards and plugtrain-shards.json go")
    s.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the spec (TOML value syntax); repeatable")
    s.add_argument("--val-fraction", type=float, default=0.2, help="a folder or csv without val: held-out share")
    s.add_argument("--seed", type=int, default=0, help="a folder or csv: the seed of the held-out split")
    s.add_argument("--overwrite", action="store_true", help="replace the shards already in DIR")

    if plugins:
        from plugtrain.core.registry import get_registry

        for command in get_registry().commands(reserved=sub.choices):
            command.add_to(sub)
    return p


def _may_name_a_plugin_command(argv: list[str]) -> bool:
    """False when the command line names a built-in command (or asks for the version): plugins stay unloaded."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None:
        return "--version" not in argv
    built_in = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return first not in built_in


def _run(args: argparse.Namespace) -> int:
    plugin_command = getattr(args, "plugtrain_plugin_command", None)
    if plugin_command is not None:
        return plugin_command.invoke(args)
    if args.command == "list":
        from plugtrain.commands import components

        return components.list_components(args.kind, args.pattern, as_json=args.json, pretrained=args.pretrained)
    if args.command == "show":
        from plugtrain.commands import components

        return components.show_component(args.kind, args.name, as_json=args.json)
    if args.command == "plugins":
        from plugtrain.commands import components

        return components.list_plugins(as_json=args.json)
    if args.command == "check":
        from plugtrain.commands import check

        return check.run(args.specs, args.overrides, print_resolved=args.print_resolved)
    if args.command == "schema":
        from plugtrain.commands import schema

        return schema.run()
    if args.command == "weights":
        from plugtrain.commands import weights

        return weights.run(args.action, args.specs, args.overrides)
    if args.command == "train" and args.folds is not None:
        from plugtrain.sweep import cv

        return cv.run(args.specs, args.overrides, folds=args.folds, resume=args.resume, overwrite=args.overwrite,
                      dry_run=args.dry_run)
    if args.command == "lr-find":
        from plugtrain.commands import lrfind

        return lrfind.run(args.spec, args.overrides, out=args.out, overwrite=args.overwrite,
                          batch_size=args.batch_size, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                          max_batch_size=args.max_batch_size, as_json=args.json)
    if args.command == "train":
        from plugtrain.commands import train

        return train.run(args.specs, args.overrides, resume=args.resume, overwrite=args.overwrite,
                         dry_run=args.dry_run)
    if args.command == "submit":
        from plugtrain.commands import submit

        return submit.run(args.spec, args.overrides, launch=args.launch, resume=args.resume, overwrite=args.overwrite,
                          dry_run=args.dry_run, **{k: getattr(args, k) for k in submit.FLAGS})
    if args.command == "evaluate":
        from plugtrain.commands import evaluate

        return evaluate.run(args.run_dir, checkpoint=args.checkpoint, split=args.split, weights=args.weights,
                            as_json=args.json, tta=args.tta)
    if args.command == "predict":
        from plugtrain.commands import predict

        return predict.run(args.run_dir, args.images, checkpoint=args.checkpoint, weights=args.weights,
                           top_k=args.top_k, as_json=args.json, out=args.out, overwrite=args.overwrite,
                           batch_size=args.batch_size, num_workers=args.num_workers, on_error=args.on_error,
                           tta=args.tta)
    if args.command == "export":
        from plugtrain.commands import export

        return export.run(args.run_dir, checkpoint=args.checkpoint, fmt=args.fmt, weights=args.weights,
                          output=args.output, tolerance=args.tolerance, as_json=args.json,
                          overwrite=args.overwrite)
    if args.command == "shards":
        from plugtrain.commands import shards

        return shards.run(args.source, out=args.out, shard_size=args.shard_size, overrides=args.overrides,
                          val_fraction=args.val_fraction, seed=args.seed, overwrite=args.overwrite)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from plugtrain.core.errors import PlugtrainError, debug, printable

    try:
        args = _parser(plugins=_may_name_a_plugin_command(argv)).parse_args(argv)
        return _run(args)
    except PlugtrainError as exc:
        if debug():
            traceback.print_exc()
        text = printable(str(exc))  # a PlugtrainError's text is printable already; a subclass may override __str__
        print(f"plugtrain: error: {text}" if not text.startswith("plugtrain:") else text, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("plugtrain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `plugtrain list | head`: stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
