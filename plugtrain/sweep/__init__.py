"""Hyperparameter sweeps on Optuna and k-fold cross-validation, outside the core.

* :mod:`.space`: the sweep file (run spec, search space, objective, sampler, pruner) and its check;
* :mod:`.strategies`: the samplers and pruners, declared once (names, options, descriptions, how each is built);
* :mod:`.study`: one sweep worker on an Optuna RDB study (heartbeats, retries, study-wide trial count);
* :mod:`.results`: the status table, ``best.toml``, plots, TensorBoard;
* :mod:`.cv`: ``plugtrain train SPEC --folds K``;
* :mod:`.runner`: one ordinary run in-process, with extra callbacks and a fold.

Optuna is imported by :mod:`.study` and :mod:`.results` inside functions only; nothing here is imported by
``plugtrain list`` or by :mod:`plugtrain.core`.
"""
