"""Multitask batch schedules (one batch = one task), deterministic from seed and epoch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from vlcli.data.sampling import MultitaskLoader, SamplingError, counts, schedule

LENGTHS = {"vqa": 6, "gqa": 3, "nlvr": 1}


def test_proportional_is_one_pass_shuffled_by_seed_and_epoch():
    steps = schedule("proportional", LENGTHS, seed=9595, epoch=0)
    assert counts(steps) == LENGTHS
    assert steps == schedule("proportional", LENGTHS, seed=9595, epoch=0)
    others = {tuple(schedule("proportional", LENGTHS, seed=9595, epoch=e)) for e in range(1, 6)}
    others |= {tuple(schedule("proportional", LENGTHS, seed=s, epoch=0)) for s in range(5)}
    assert len(others - {tuple(steps)}) >= 3  # the order changes with the epoch and the seed
    # seed + epoch: (seed 1, epoch 0) and (seed 0, epoch 1) give the same order
    assert schedule("proportional", LENGTHS, seed=1, epoch=0) == schedule("proportional", LENGTHS, seed=0, epoch=1)


def test_roundrobin_alternates_and_drops_finished_tasks():
    assert schedule("roundrobin", LENGTHS, seed=0, epoch=0) == [
        "vqa", "gqa", "nlvr", "vqa", "gqa", "vqa", "gqa", "vqa", "vqa", "vqa"]
    assert schedule("roundrobin", LENGTHS, seed=3, epoch=7) == schedule("roundrobin", LENGTHS, seed=0, epoch=0)


def test_balanced_gives_every_task_the_same_count():
    steps = schedule("balanced", LENGTHS, seed=9595, epoch=2)
    assert counts(steps) == {"vqa": 3, "gqa": 3, "nlvr": 3}
    assert len(steps) == 9  # floor(10 / 3) each
    assert sorted(counts(schedule("balanced", LENGTHS, seed=0, epoch=0, n_batches=5)).values()) == [5, 5, 5]


def test_empty_tasks_and_unknown_schedule():
    assert schedule("proportional", {"vqa": 2, "gqa": 0}, seed=0, epoch=0) == ["vqa", "vqa"]
    assert schedule("balanced", {"vqa": 0}, seed=0, epoch=0) == []
    with pytest.raises(SamplingError, match="'random'.*proportional, roundrobin, balanced"):
        schedule("random", LENGTHS, seed=0, epoch=0)
    with pytest.raises(SamplingError, match="at least one task loader"):
        MultitaskLoader({}, "proportional")


def loaders() -> dict[str, DataLoader]:
    return {
        "vqa": DataLoader(torch.arange(12), batch_size=2),  # 6 batches
        "gqa": DataLoader(torch.arange(100, 106), batch_size=2),  # 3 batches
        "nlvr": DataLoader(torch.arange(200, 202), batch_size=2),  # 1 batch
    }


def test_multitask_loader_proportional_yields_every_batch_once():
    ml = MultitaskLoader(loaders(), "proportional", seed=1)
    ml.set_epoch(3)
    got = list(ml)
    assert len(ml) == 10 and [t for t, _ in got] == schedule("proportional", LENGTHS, seed=1, epoch=3)
    seen = sorted(int(x) for _, b in got for x in b)
    assert seen == list(range(12)) + list(range(100, 106)) + [200, 201]
    assert all((t == "vqa") == (int(b[0]) < 100) for t, b in got)


def test_multitask_loader_balanced_restarts_a_finished_loader():
    ml = MultitaskLoader(loaders(), "balanced", seed=0)
    got = list(ml)
    nlvr = [b.tolist() for t, b in got if t == "nlvr"]
    assert nlvr == [[200, 201]] * 3  # one batch, re-iterated instead of ending the epoch
    gqa = [b.tolist() for t, b in got if t == "gqa"]
    assert gqa == [[100, 101], [102, 103], [104, 105]]
    assert len([t for t, _ in got if t == "vqa"]) == 3


def test_set_epoch_reaches_distributed_style_samplers():
    class Sampler(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = None

        def __iter__(self):
            return iter(range(4))

        def __len__(self):
            return 4

        def set_epoch(self, epoch):
            self.epoch = epoch

    sampler = Sampler()
    ml = MultitaskLoader({"vqa": DataLoader(torch.arange(4), sampler=sampler, batch_size=2)}, "roundrobin")
    ml.set_epoch(5)
    assert sampler.epoch == 5 and [t for t, _ in ml] == ["vqa", "vqa"]
