"""Encoder prompt tuning (spec §3.7): P = W2·tanh(W1·E[j] + c1) + c2, j = 0..L−1, prepended to the text.

One prompt module per task, or one for all (``use_single_prompt``). Init: N(0, 0.02) for the embedding
and the Linear weights, zero biases (both backbones).
"""

from __future__ import annotations

import torch
from torch import nn

INIT_STD = 0.02


class InputPrompt(nn.Module):
    def __init__(self, length: int, d_model: int, mid_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(length, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mid_dim), nn.Tanh(), nn.Linear(mid_dim, d_model))
        nn.init.normal_(self.embedding.weight, std=INIT_STD)
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding.weight)


class PromptController(nn.Module):
    """(B, L, d) prompt embeddings for the router's task."""

    parameter_group = "prompts"

    def __init__(self, length: int, d_model: int, mid_dim: int, tasks: list[str], single: bool, router):
        super().__init__()
        self._router = (router,)
        self.single = single
        self.length = length
        keys = ["shared"] if single else list(tasks)
        self.prompts = nn.ModuleDict({k: InputPrompt(length, d_model, mid_dim) for k in keys})

    def forward(self, batch_size: int) -> torch.Tensor:
        key = "shared" if self.single else self._router[0].task
        if key not in self.prompts:
            raise ValueError(
                f"no prompt for task {key!r}; the model was built for tasks {list(self.prompts)}"
            )
        p = self.prompts[key]()
        return p.unsqueeze(0).expand(batch_size, -1, -1)
