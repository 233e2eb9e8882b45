"""The optimizer classes behind the built-in ``LookAhead`` and ``SAM`` (``plugtrain/plugins/optimizers.py``).

Both subclass pytorch-optimizer's own so that a checkpoint of plain types round-trips them. They live here, not in
the plugin module, because this module imports torch and pytorch-optimizer at the top: the plugin imports it only
inside its factories (listing optimizers stays cheap), while the classes stay importable and subclassable
(``from plugtrain.plugins.optimizer_classes import SAM``). Their ``state_dict`` layouts are those of existing
checkpoints: keep them.
"""

from __future__ import annotations

from typing import Any

import pytorch_optimizer
import torch

__all__ = ["SAM", "Lookahead"]


class Lookahead(pytorch_optimizer.Lookahead):
    """pytorch-optimizer's ``Lookahead`` whose state dict keys its slow weights by ``"group.index"`` strings instead
    of ``(group, index)`` tuples, so that it fits a checkpoint of plain types (loaded with ``weights_only=True``)."""

    def state_dict(self):
        state = super().state_dict()
        state["lookahead_state"] = {f"{g}.{i}": v for (g, i), v in state["lookahead_state"].items()}
        return state

    def load_state_dict(self, state):
        slow = {tuple(int(x) for x in str(key).split(".")): v for key, v in state["lookahead_state"].items()}
        super().load_state_dict({**state, "lookahead_state": slow})


class SAM(pytorch_optimizer.SAM):
    """pytorch-optimizer's SAM whose ``step()`` without a closure is the second step, and whose state is the
    base optimizer's state (so that a checkpoint round-trips whatever the base is)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            self.first_step(zero_grad=True)
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state is not None and "old_p" in state:
                    p.copy_(state.pop("old_p"))
        self.base_optimizer.step()
        return loss

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the weights saved by :meth:`first_step` and take the base optimizer's step."""
        self.step()  # through the instance attribute, so LR schedulers see that the optimizer stepped
        if zero_grad:
            self.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        return {"sam_base": self.base_optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict["sam_base"])
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def __repr__(self) -> str:
        return f"SAM(base={self.base_optimizer!r})"
