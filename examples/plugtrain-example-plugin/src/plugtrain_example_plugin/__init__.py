"""An example third-party plugtrain plugin. The hook implementations live in :mod:`plugtrain_example_plugin.plugin`."""

__version__ = "0.1.0"
