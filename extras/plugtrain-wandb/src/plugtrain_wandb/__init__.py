"""plugtrain-wandb: the plugtrain logger ``wandb``. The hook implementation lives in :mod:`plugtrain_wandb.plugin`."""

__version__ = "0.1.0"
