"""plugtrain-monai: volumes and signals (1-, 2- and 3-D samples) for plugtrain through MONAI."""
