"""plugtrain-mlflow: the plugtrain logger ``mlflow``. The hook implementation lives in :mod:`plugtrain_mlflow.plugin`."""

__version__ = "0.1.0"
