"""The commands: what each ``plugtrain`` subcommand does, one module each.

This is the application layer above :mod:`plugtrain.core`: the CLI (:mod:`plugtrain.entrypoints.cli`) only parses
arguments and calls these functions, and the Python API (:mod:`plugtrain.api`) calls the same ones. Each takes
keyword arguments that mirror the command's flags and returns the exit code; bad input raises
:class:`~plugtrain.core.errors.PlugtrainError`.

* :mod:`.components` — ``list``, ``show``, ``plugins`` (no torch import: ``plugtrain list`` stays fast)
* :mod:`.check` — ``check``;  :mod:`.schema` — ``schema``
* :mod:`.train` — ``train`` (also ``--folds``);  :mod:`.evaluate` — ``evaluate``;  :mod:`.predict` — ``predict``
* :mod:`.export` — ``export`` (ONNX, pt2, safetensors);  :mod:`.weights` — ``weights fetch`` (hub weights)
* :mod:`.sweep` — ``sweep``, ``sweep status`` (Optuna; the sweep itself is :mod:`plugtrain.sweep`)
* :mod:`.shards` — ``shards`` (WebDataset shards of a data set)
* :mod:`._finished_run` — the run rebuilt for evaluate and export (opening a run, its checkpoint and weights, and
  predicting are :mod:`plugtrain.inference`, public)

Importing this package imports nothing else.
"""
