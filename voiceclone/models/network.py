"""What every network shares: the dtype each network runs in, modules whose tensors keep their dtype, and strict
loading by assignment.

Numerics rule: a tensor that must keep its dtype whatever the network is cast to (rotary frequencies and the flow's
fixed noise in float32, the F0 predictor in float64) lives in a `PinnedDtype` module. Computed tensors that no
checkpoint holds are made on the CPU explicitly, so they are real even when a network is built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

STAGES = ("llm", "flow", "vocoder")


@dataclass(frozen=True)
class StageDtypes:
    """The dtype each network runs in (the LLM, the flow, the vocoder's convolution stack)."""

    llm: torch.dtype = torch.float32
    flow: torch.dtype = torch.float32
    vocoder: torch.dtype = torch.float32

    @classmethod
    def of(cls, dtype: torch.dtype) -> StageDtypes:
        """One dtype for the LLM and the flow; the vocoder in float32 (`--dtype float32|bfloat16|float16`)."""
        return cls(llm=dtype, flow=dtype, vocoder=torch.float32)

    def names(self) -> dict[str, str]:
        """{"llm": "float32", "flow": "bfloat16", "vocoder": "bfloat16"}: as reports and fingerprints record them."""
        return {stage: str(getattr(self, stage)).removeprefix("torch.") for stage in STAGES}


class PinnedDtype(nn.Module):
    """A module whose parameters and buffers keep their dtype when the network around it is cast (`.to(bfloat16)`,
    `.half()`); device moves (`.to(device)`, `.cuda()`, `to_empty`) still apply."""

    def _apply(self, fn, recurse=True):
        def keep_dtype(tensor: Tensor) -> Tensor:
            moved = fn(tensor)
            return moved if moved.dtype == tensor.dtype else tensor.to(moved.device)

        return super()._apply(keep_dtype, recurse)


def load_assigned(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load `state` strictly by assignment (the gpt-fast way: `module` may live on the meta device), each tensor cast
    to the dtype the module declares for it. Missing, unexpected or mis-shaped keys raise RuntimeError."""
    own = module.state_dict()
    cast = {key: value.to(own[key].dtype) if key in own else value for key, value in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
