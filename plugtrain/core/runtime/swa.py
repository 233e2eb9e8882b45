"""Stochastic weight averaging with torch's ``swa_utils``: the running average of the weights from
``trainer.swa_start_epoch`` on (by default the last quarter of the epochs), optionally under ``swa_lr``, reached by a
cosine anneal over ``swa_anneal_epochs`` SWA epochs (torch's default 10; 0 or 1: at once) and constant after."""

from __future__ import annotations

from typing import Any

import torch


class SWA:
    def __init__(self, model: torch.nn.Module, optimizer: Any, swa_lr: float | None, start_epoch: int | None,
                 epochs: int, anneal_epochs: int = 10) -> None:
        self.model = torch.optim.swa_utils.AveragedModel(model)
        self.scheduler = None
        if swa_lr is not None and optimizer is not None:
            self.scheduler = torch.optim.swa_utils.SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=anneal_epochs)
        self.start = start_epoch if start_epoch is not None else max(1, (epochs * 3) // 4)

    def active(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based, or the number of epochs completed) is averaged."""
        return epoch >= self.start
