"""The learning-rate schedule comes from transformers and keeps the original's values exactly."""

from __future__ import annotations

import pytest
import torch

from vlcli.train.optim import linear_schedule


def original_factor(step: int, total: int, warmup_ratio: float) -> float:
    """The original VL-Adapter schedule (transformers 4.2's get_linear_schedule_with_warmup), written out."""
    warmup = int(total * warmup_ratio)
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@pytest.mark.parametrize(("total", "ratio"), [(1, 0.05), (7, 0.0), (40, 0.05), (240, 0.1), (1000, 0.5), (13, 1.0)])
def test_linear_schedule_equals_the_original_at_every_step(total, ratio):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2e-3)
    sched = linear_schedule(opt, total, ratio)
    for step in range(total + 2):
        assert sched.get_last_lr()[0] == 2e-3 * original_factor(step, total, ratio), step
        opt.step()
        sched.step()
