"""plugtrain-segmentation: semantic segmentation for plugtrain. The hook implementations live in
:mod:`plugtrain_segmentation.plugin`."""

__version__ = "0.1.0"
