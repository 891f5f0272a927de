"""LoRA on the q and v projections of every attention block, T5 and BART (spec §3.6).

``y = x·Wᵀ + b + (alpha / r)·(Drop(x)·Aᵀ)·Bᵀ`` with A ∈ R^{r×in} (Kaiming-uniform, a=√5), B ∈ R^{out×r} = 0
(the update starts at zero), dropout 0.1 in training. One (A, B) per task, or one for all tasks
(``use_single_lora``). Implemented on vlcli's injection mechanism rather than ``peft``'s LoraLayer so that
the backbone keeps transformers' own state-dict keys and per-task routing goes through the one router.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LORA_DROPOUT = 0.1


class LoRAPair(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, d_in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x):
        return (x @ self.lora_A.T) @ self.lora_B.T


class LoRA(nn.Module):
    """The LoRA branch of one Linear, selected by the router's task."""

    parameter_group = "LoRA"

    def __init__(
        self, d_in: int, d_out: int, rank: int, alpha: float, tasks: list[str], single: bool, router
    ):
        super().__init__()
        self._router = (router,)
        self.single = single
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(LORA_DROPOUT)
        keys = ["shared"] if single else list(tasks)
        self.pairs = nn.ModuleDict({k: LoRAPair(d_in, d_out, rank) for k in keys})

    def forward(self, x):
        key = "shared" if self.single else self._router[0].task
        if key not in self.pairs:
            raise ValueError(
                f"no LoRA weights for task {key!r}; the model was built for tasks {list(self.pairs)}"
            )
        return self.scaling * self.pairs[key](self.dropout(x))
