"""Shared pieces of the sweep tests: a sweep file next to a tiny run spec, the study read back with Optuna."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_sweep(path: Path, spec: Path, body: str) -> Path:
    """A sweep file at ``path`` naming ``spec`` (relative to the sweep file), with ``body`` after the spec line."""
    rel = Path(spec).resolve().relative_to(path.parent.resolve()) if Path(spec).resolve().is_relative_to(
        path.parent.resolve()) else Path(spec).resolve()
    path.write_text(f'spec = "{rel.as_posix()}"\n\n{body}', encoding="utf-8")
    return path


def lr_sweep(tmp_path: Path, name: str, *, epochs: int, steps: int, **settings: Any) -> Path:
    """``<tmp_path>/<name>.toml``: a sweep over ``optimizer.lr`` (log-uniform in [1e-3, 1e-2]) of a tiny spec
    (``base.toml``, runs in ``<tmp_path>/runs``) with ``settings`` as its ``[sweep]`` table."""
    import tomli_w
    from conftest import tiny_spec

    spec = tiny_spec(tmp_path, "base", tmp_path / "runs", epochs=epochs, steps=steps)
    body = tomli_w.dumps({"sweep": settings}) + "\n[params]\noptimizer.lr = { log_uniform = [1e-3, 1e-2] }\n"
    return write_sweep(tmp_path / f"{name}.toml", spec, body)


def load_study(sweep_dir: Path) -> Any:
    """The study of a sweep directory, from its default SQLite storage."""
    import json

    import optuna

    meta = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    return optuna.load_study(study_name=meta["study_name"], storage=f"sqlite:///{(sweep_dir / 'study.db').resolve()}")


def plain_table(out: str, first_column: str = "trial") -> tuple[list[str], list[list[str]]]:
    """The header and rows of the tab-separated table in ``out`` (the lines from the one starting ``first_column``)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split("\t")[0] == first_column)
    header = lines[start].split("\t")
    rows = []
    for line in lines[start + 1:]:
        cells = line.split("\t")
        if len(cells) != len(header):
            break
        rows.append(cells)
    return header, rows
