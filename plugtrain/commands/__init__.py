"""The commands: what ``plugtrain list|show|plugins|check|schema|train|evaluate|predict`` do, one module each.

This is the application layer above :mod:`plugtrain.core`: the CLI (:mod:`plugtrain.entrypoints.cli`) only parses
arguments and calls these functions, and a Python API can call the same ones. Each takes keyword arguments that
mirror the command's flags and returns the exit code; bad input raises :class:`~plugtrain.core.errors.PlugtrainError`.

* :mod:`.components` — ``list``, ``show``, ``plugins`` (no torch import: ``plugtrain list`` stays fast)
* :mod:`.check` — ``check``;  :mod:`.schema` — ``schema``
* :mod:`.train` — ``train``;  :mod:`.evaluate` — ``evaluate``;  :mod:`.predict` — ``predict``

Importing this package imports nothing else.
"""
