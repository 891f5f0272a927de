"""The training loop's host syncs: the non-finite check every --sync_every steps, --compile's fallback."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli import api
from vlcli.train.engine import Engine, TrainingError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {"data": make_world(root / "datasets", n_train=24), "t5": make_backbone_dir(root / "t5", "t5")}


def settings(world, out, data=None, **extra):
    values = dict(task="vqa", backbone=str(world["t5"]), data_root=str(data or world["data"]),
                  feature_type=FEATURE_TYPE, batch_size=4, use_adapter=True, reduction_factor=4, lr=3e-3,
                  epochs=2, output=str(out))
    values.update(extra)
    return api.load_settings(**values)


def poison(world, tmp_path, image: str) -> object:
    data = tmp_path / "datasets"
    shutil.copytree(world["data"], data)
    with h5py.File(data / f"COCO/clip_features/data_clip_RN50_att/{image}.h5", "r+") as f:
        f["features"][:] = np.nan
    return data


def test_a_nan_stops_within_sync_every_steps_and_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    """6 batches per epoch; the run stops at the first sync after the poisoned batch."""
    data = poison(world, tmp_path, "COCO_train2014_000000000001")
    steps: list[int] = []
    import vlcli.train.engine as engine_mod

    real = engine_mod.Engine._optimizer_step

    def counting(self, plan):
        steps.append(1)
        return real(self, plan)

    monkeypatch.setattr(engine_mod.Engine, "_optimizer_step", counting)
    engine = Engine(settings(world, tmp_path / "run", data, sync_every=2))
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 0 batch \d+.*--sync_every") as err:
        engine.fit()
    import re

    bad_batch = int(re.search(r"batch (\d+)", str(err.value)).group(1))
    # batch b is optimiser step b + 1; the next sync (every 2 steps) comes at most one step later
    assert bad_batch + 1 <= len(steps) <= bad_batch + 2
    assert not (tmp_path / "run" / "LAST.safetensors").exists()


def test_a_nan_after_an_epoch_keeps_that_epochs_last_intact(world, tmp_path):
    good = settings(world, tmp_path / "run", epochs=1)
    Engine(good).fit()
    before = (tmp_path / "run" / "LAST.safetensors").read_bytes()
    data = poison(world, tmp_path, "COCO_train2014_000000000001")
    resumed = settings(world, tmp_path / "run", data, epochs=2, sync_every=3)
    with pytest.raises(TrainingError, match="non-finite loss at epoch 1"):
        Engine(resumed).fit(resume=True)
    assert (tmp_path / "run" / "LAST.safetensors").read_bytes() == before


def test_sync_every_does_not_change_the_numbers(world, tmp_path):
    Engine(settings(world, tmp_path / "a", sync_every=1)).fit()
    Engine(settings(world, tmp_path / "b", sync_every=50)).fit()
    a, b = load_file(str(tmp_path / "a" / "LAST.safetensors")), load_file(str(tmp_path / "b" / "LAST.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compile_that_fails_falls_back_to_eager_with_a_warning(world, tmp_path, monkeypatch):
    """torch.compile raising at the first call (an unsupported platform) is reported once; training goes on."""

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler")

    messages: list[str] = []

    class Collect:
        def __getattr__(self, name):
            return (lambda text: messages.append(text)) if name == "message" else (lambda *a, **k: None)

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken(model))
    Engine(settings(world, tmp_path / "compiled", compile=True), reporter=Collect()).fit()
    Engine(settings(world, tmp_path / "eager")).fit()
    assert [m for m in messages if "--compile failed" in m and "no C++ compiler" in m] != []
    assert len([m for m in messages if "--compile failed" in m]) == 1
    a = load_file(str(tmp_path / "compiled" / "LAST.safetensors"))
    b = load_file(str(tmp_path / "eager" / "LAST.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_bf16_stores_frozen_weights_in_bf16_when_training_in_bf16(world, tmp_path):
    """CPU autocast stands in for the GPU's bf16 here; the trained weights stay float32."""
    engine = Engine(settings(world, tmp_path / "run", frozen_dtype="bf16", epochs=1))
    engine.amp_dtype = torch.bfloat16
    history = engine.fit()
    frozen = [p for p in engine.module.parameters() if not p.requires_grad]
    trained = [p for p in engine.module.parameters() if p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen if p.is_floating_point())
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert history.records[-1]["train_loss"] is not None and np.isfinite(history.records[-1]["train_loss"])


def test_frozen_bf16_without_bf16_training_is_reported_and_changes_nothing(world, tmp_path):
    messages = []

    class Collect:
        def __getattr__(self, name):
            return (lambda text: messages.append(text)) if name == "message" else (lambda *a, **k: None)

    engine = Engine(settings(world, tmp_path / "run", frozen_dtype="bf16", epochs=1), reporter=Collect())
    engine.fit()
    assert any("--frozen_dtype bf16 ignored" in m for m in messages)
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())


def test_resume_is_bit_identical_with_loader_workers_and_prefetch(world, tmp_path):
    from vlcli.train.engine import Interrupted

    full = settings(world, tmp_path / "full", num_workers=2, prefetch=2, epochs=2)
    Engine(full).fit()
    cut = settings(world, tmp_path / "cut", num_workers=2, prefetch=2, epochs=2)
    with pytest.raises(Interrupted):
        Engine(cut).fit(stop_after_steps=8)  # mid epoch 2 (6 steps per epoch)
    Engine(cut).fit(resume=True)
    a, b = load_file(str(tmp_path / "full" / "LAST.safetensors")), load_file(str(tmp_path / "cut" / "LAST.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_draws_do_not_depend_on_the_number_of_workers(world, tmp_path):
    """Each batch's target draws are seeded by its key, not by the worker reading it: one worker and three give
    the same run (every question gets three scored answers here, so the draws matter)."""
    import json

    data = tmp_path / "datasets"
    shutil.copytree(world["data"], data)
    questions = data / "vqa/karpathy_train.json"
    rows = json.loads(questions.read_text())
    for row in rows:
        row["label"] = {**row["label"], "yes": 0.6, "no": 0.3}
    questions.write_text(json.dumps(rows))

    def run(name, workers):
        Engine(settings(world, tmp_path / name, data=data, num_workers=workers, prefetch=1, epochs=2)).fit()
        return load_file(str(tmp_path / name / "LAST.safetensors")), \
            [r["train_loss"] for r in map(eval_json, (tmp_path / name / "metrics.jsonl").read_text().splitlines())]

    one, three = run("one", 1), run("three", 3)
    assert one[1] == three[1]
    assert all(torch.equal(one[0][k], three[0][k]) for k in one[0])


def test_training_workers_persist_across_epochs(world, tmp_path, monkeypatch):
    import os

    from vlcli.tasks.base import TaskDataset

    log = tmp_path / "draws.log"
    redraw = TaskDataset.redraw

    def logged(self, key):
        with log.open("a") as fh:
            fh.write(f"{os.getpid()} {key[1]}\n")
        redraw(self, key)

    monkeypatch.setattr(TaskDataset, "redraw", logged)  # before the workers fork: they inherit it
    Engine(settings(world, tmp_path / "run", num_workers=2, prefetch=1, epochs=3)).fit()
    by_epoch: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        pid, epoch = line.split()
        by_epoch.setdefault(epoch, set()).add(pid)
    assert sorted(by_epoch) == ["0", "1", "2"]
    assert by_epoch["0"] == by_epoch["1"] == by_epoch["2"] and len(by_epoch["0"]) == 2
    assert str(os.getpid()) not in by_epoch["0"]


def eval_json(line):
    import json

    return json.loads(line)


def test_resume_with_workers_after_a_run_without_says_the_draws_change(world, tmp_path):
    from vlcli.train.engine import Interrupted

    messages: list[str] = []

    class Collect:
        def __getattr__(self, name):
            return (lambda text: messages.append(text)) if name == "message" else (lambda *a, **k: None)

    with pytest.raises(Interrupted):
        Engine(settings(world, tmp_path / "run", num_workers=0)).fit(stop_after_steps=3)
    Engine(settings(world, tmp_path / "run", num_workers=2, prefetch=1), reporter=Collect()).fit(resume=True)
    assert any("not bit-identical" in m and "--num_workers 2" in m for m in messages)
    messages.clear()
    with pytest.raises(Interrupted):
        Engine(settings(world, tmp_path / "same", num_workers=0)).fit(stop_after_steps=3)
    Engine(settings(world, tmp_path / "same", num_workers=0), reporter=Collect()).fit(resume=True)
    assert not any("bit-identical" in m for m in messages)


def test_objects_alive_when_training_starts_are_frozen_for_the_run_and_given_back(world, tmp_path):
    import gc

    seen: list[int] = []

    class Watch:
        def __getattr__(self, name):
            return (lambda *a, **k: seen.append(gc.get_freeze_count())) if name == "epoch_start" else (lambda *a, **k: None)

    assert gc.get_freeze_count() == 0
    Engine(settings(world, tmp_path / "run", epochs=2), reporter=Watch()).fit()
    assert len(seen) == 2 and min(seen) > 10_000  # the model, tokenizer, datasets and every imported module
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a caller that froze its own objects keeps them frozen
    try:
        kept = gc.get_freeze_count()
        Engine(settings(world, tmp_path / "again", epochs=1)).fit()
        assert gc.get_freeze_count() > 0.9 * kept  # still frozen (a few of those objects were freed since)
    finally:
        gc.unfreeze()
