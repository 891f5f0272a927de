"""An original VL-T5 .pth (a full state dict, keys as the original saved them) into a run that adds adapters."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.model.checkpoint import CheckpointError, peft_keys
from vlcli.model.original import to_original_key


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return make_backbone_dir(tmp_path_factory.mktemp("orig") / "t5", "t5")


def build(t5, **options):
    settings = api.load_settings(task="vqa", backbone=str(t5), feat_dim=16, **options)
    return api.build_model(settings).eval()


def original_pth(model, path, drop: str | None = None):
    """What VL-T5 saved under DDP: ``module.`` + the original key of every backbone / visual tensor."""
    state = {"module." + to_original_key(k, "t5"): v.clone() for k, v in model.state_dict().items()
             if k not in peft_keys(model) and k != drop}
    torch.save(state, path)
    return path


def test_a_full_original_checkpoint_warm_starts_an_adapter_run(t5, tmp_path):
    torch.manual_seed(1)
    pretrained = build(t5)  # a VL-T5 without PEFT modules (what the original pretraining saved)
    path = original_pth(pretrained, tmp_path / "Epoch30.pth")
    torch.manual_seed(2)
    target = build(t5, use_adapter=True, reduction_factor=4)
    report = api.load_checkpoint(target, path)
    assert report.kind == "original" and report.missing == [] and report.unexpected == []
    for key, value in pretrained.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert peft_keys(target) and not set(report.loaded) & peft_keys(target)  # the adapters start fresh


def test_an_original_checkpoint_missing_a_backbone_tensor_is_refused_by_name(t5, tmp_path):
    torch.manual_seed(1)
    pretrained = build(t5)
    dropped = "lm.encoder.block.0.layer.1.DenseReluDense.wi.weight"
    assert dropped in pretrained.state_dict()
    path = original_pth(pretrained, tmp_path / "cut.pth", drop=dropped)
    target = build(t5, use_adapter=True, reduction_factor=4)
    with pytest.raises(CheckpointError, match=r"1 missing key[\s\S]*encoder\.block\.0\.layer\.1\.DenseReluDense\.wi"):
        api.load_checkpoint(target, path)
    report = api.load_checkpoint(target, path, allow_partial=True)  # the escape hatch still works, and says what
    assert report.missing == [dropped]
