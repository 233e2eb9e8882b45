"""The runtime: a run spec becomes a training run (single process or DDP / FSDP2 under torchrun).

Modules: :mod:`.build` (spec -> objects through the registry), :mod:`.trainer` (the loop) with :mod:`.step` (one
optimizer step), :mod:`.tracker` (the training loss, read at log intervals) and :mod:`.evaluator` (validation),
:mod:`.loader` (resumable sampler, dataset wrapper, collate), :mod:`.checkpoint` (atomic save, ``weights_only``
load), :mod:`.distributed` (process group, device), :mod:`.fsdp` (FSDP2 sharding and sharded checkpoints),
:mod:`.rundir` (the run directory), :mod:`.precision` (autocast), :mod:`.compare` (better-than for ``run.mode``),
:mod:`.progress` (the training progress bar). The commands that drive it (train, evaluate, predict) live in
:mod:`plugtrain.commands`.

Importing this package imports nothing: torch loads when a module that needs it is used.
"""
