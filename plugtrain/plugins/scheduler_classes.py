"""The scheduler classes behind the built-in ``OneCycleLR`` and ``ReduceLROnPlateau`` (``plugtrain/plugins/
schedulers.py``): torch's own, with the run-aware behaviour the runtime relies on.

They live here, not in the plugin module, because this module imports torch at the top: the plugin imports it only
inside its factories (listing schedulers stays cheap), while the classes stay importable and subclassable
(``from plugtrain.plugins.scheduler_classes import OneCycleLR``). Their ``state_dict`` is torch's: keep it.
"""

from __future__ import annotations

from torch.optim import lr_scheduler

__all__ = ["OneCycleLR", "ReduceLROnPlateau"]


class OneCycleLR(lr_scheduler.OneCycleLR):
    """torch's OneCycleLR that holds its final learning rate when stepped past ``total_steps``."""

    def get_lr(self):
        if self.last_epoch >= self.total_steps:
            saved = self.last_epoch
            self.last_epoch = self.total_steps - 1
            try:
                return super().get_lr()
            finally:
                self.last_epoch = saved
        return super().get_lr()


class ReduceLROnPlateau(lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau whose ``mode`` may be ``"auto"``: set by the runtime from the monitored metric."""

    def __init__(self, optimizer, mode: str = "auto", **kwargs) -> None:
        self.auto_mode = mode == "auto"
        super().__init__(optimizer, mode="min" if self.auto_mode else mode, **kwargs)

    def set_run_mode(self, mode: str) -> None:
        """The direction (``"min"``/``"max"``) of the metric passed to :meth:`step`; a no-op unless auto."""
        if self.auto_mode and mode != self.mode:
            self._init_is_better(mode=mode, threshold=self.threshold, threshold_mode=self.threshold_mode)
            self._reset()
