"""An original VL-T5 .pth (a full state dict, keys as the original saved them) into a run that adds PEFT modules."""

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


def vl_pretrained(t5, **options) -> dict[str, torch.Tensor]:
    """The state of a model whose every tensor moved away from the backbone's weights (what VL pretraining
    did), so a load that keeps a fresh value is seen."""
    torch.manual_seed(1)
    model, generator = build(t5, **options), torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():  # each tied tensor once
            param.add_(torch.randn(param.shape, generator=generator))
    return {k: v.clone() for k, v in model.state_dict().items()}


def original_pth(state, path, drop=()):
    """What VL-T5 saved under DDP: ``module.`` + the original key of every tensor (less ``drop``)."""
    torch.save({"module." + to_original_key(k, "t5"): v for k, v in state.items() if k not in drop}, path)
    return path


def test_a_full_original_checkpoint_warm_starts_an_adapter_run(t5, tmp_path):
    pretrained = vl_pretrained(t5)  # a VL-T5 without PEFT modules (what the original pretraining saved)
    path = original_pth(pretrained, tmp_path / "Epoch30.pth")
    torch.manual_seed(2)
    target = build(t5, use_adapter=True, reduction_factor=4)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = api.load_checkpoint(target, path)
    assert report.kind == "original" and report.missing == [] and report.unexpected == []
    for key, value in pretrained.items():
        assert torch.equal(target.state_dict()[key], value), key
    adapters = peft_keys(target)
    assert adapters and not set(report.loaded) & adapters
    assert all(torch.equal(target.state_dict()[k], fresh[k]) for k in adapters)  # the adapters start fresh


def test_an_original_checkpoint_missing_a_backbone_tensor_is_refused_by_name(t5, tmp_path):
    pretrained = vl_pretrained(t5)
    dropped = "lm.encoder.block.0.layer.1.DenseReluDense.wi.weight"
    assert dropped in pretrained
    path = original_pth(pretrained, tmp_path / "cut.pth", drop={dropped})
    target = build(t5, use_adapter=True, reduction_factor=4)
    fresh = target.state_dict()[dropped].clone()
    with pytest.raises(CheckpointError, match=r"1 missing key[\s\S]*encoder\.block\.0\.layer\.1\.DenseReluDense\.wi"):
        api.load_checkpoint(target, path)
    report = api.load_checkpoint(target, path, allow_partial=True)  # the escape hatch still works, and says what
    assert report.missing == [dropped]
    key = "lm.encoder.block.1.layer.0.SelfAttention.q.weight"
    assert torch.equal(target.state_dict()[key], pretrained[key])  # the rest did load
    assert torch.equal(target.state_dict()[dropped], fresh)  # the missing one kept its value


def test_many_missing_tensors_are_counted_and_the_first_named(t5, tmp_path):
    pretrained = vl_pretrained(t5)
    cut = sorted(k for k in pretrained if ".block.1." in k)
    assert len(cut) > 10
    path = original_pth(pretrained, tmp_path / "half.pth", drop=set(cut))
    with pytest.raises(CheckpointError) as err:
        api.load_checkpoint(build(t5, use_lora=True), path)
    message = str(err.value)
    assert f"original checkpoint {path} does not fit the model: {len(cut)} missing keys" in message
    assert f": {cut[0]}, " in message and f"... and {len(cut) - 10} more" in message
    assert "--allow_partial_load" in message


def test_an_original_checkpoint_with_peft_tensors_must_have_all_of_them(t5, tmp_path):
    """A checkpoint saved with adapters was trained with them: a missing adapter tensor is refused too."""
    trained = vl_pretrained(t5, use_adapter=True, reduction_factor=4)
    adapter = sorted(peft_keys(build(t5, use_adapter=True, reduction_factor=4)))[0]
    path = original_pth(trained, tmp_path / "adapters.pth", drop={adapter})
    with pytest.raises(CheckpointError, match=rf"1 missing key[\s\S]*{adapter}"):
        api.load_checkpoint(build(t5, use_adapter=True, reduction_factor=4), path)
    target = build(t5, use_adapter=True, reduction_factor=4)
    original_pth(trained, path)
    assert api.load_checkpoint(target, path).missing == []
    assert all(torch.equal(target.state_dict()[k], trained[k]) for k in trained)
