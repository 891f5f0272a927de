"""Checkpoint save / load with real tensors and tiny torch models."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import torch
from safetensors import safe_open
from torch import nn

import vlcli
from vlcli.model import checkpoint as ckpt
from vlcli.model.checkpoint import (
    CheckpointError,
    LoadReport,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)

CALLER_FIELDS = {
    "backbone": "t5-base",
    "vocab_size": 11,
    "visual": {"feat_dim": 2048, "n_boxes": 36},
    "method": {"name": "adapter", "reduction_factor": 3},
    "tasks": ["vqa", "gqa"],
    "extra": {"note": "test"},
}
ADAPTER_KEYS = {
    "adapter.down.weight",
    "adapter.down.bias",
    "adapter.up.weight",
    "adapter.up.bias",
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
}


class Adapter(nn.Module):
    def __init__(self, dim: int, r: int):
        super().__init__()
        self.down = nn.Linear(dim, r)
        self.up = nn.Linear(r, dim)

    def forward(self, x):
        return x + self.up(torch.relu(self.down(x)))


class Tiny(nn.Module):
    """Embedding tied to the output head, frozen backbone pieces, a trainable adapter and BatchNorm."""

    def __init__(self, seed: int, r: int = 2, n_extra: int = 0, vocab: int = 11, dim: int = 6):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.frozen = nn.Linear(dim, dim)
        self.frozen_bn = nn.BatchNorm1d(dim)
        self.adapter = Adapter(dim, r)
        self.bn = nn.BatchNorm1d(dim)
        self.extra = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_extra))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        for module in (self.embed, self.frozen, self.frozen_bn):
            for p in module.parameters():
                p.requires_grad_(False)
        # Distinct, non-default values everywhere, so a missed copy shows.
        with torch.no_grad():
            for p in self.parameters():
                p.normal_()

    def forward(self, ids):
        x = self.embed(ids)
        x = self.frozen_bn(self.frozen(x))
        x = self.bn(self.adapter(x))
        for layer in self.extra:
            x = layer(x)
        return self.head(x)


def trained(seed: int = 1, **kw) -> Tiny:
    model = Tiny(seed, **kw)
    model.train()
    model(torch.randint(0, 11, (8,)))  # moves the BatchNorm running statistics
    return model


def file_keys(path) -> set[str]:
    with safe_open(str(path), framework="pt") as fh:
        return set(fh.keys())


def assert_same(a: nn.Module, b: nn.Module, keys) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for key in keys:
        assert torch.equal(sa[key], sb[key]), key


# ----------------------------------------------------------------------------------------- save


def test_adapter_save_holds_trainable_params_and_bn_stats(tmp_path):
    model = trained()
    path = save_checkpoint(model, tmp_path / "BEST", CALLER_FIELDS)
    assert path == tmp_path / "BEST.safetensors"
    assert file_keys(path) == ADAPTER_KEYS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BEST.json", "BEST.safetensors"]


def test_manifest_fields_and_keys_match_the_file(tmp_path):
    path = save_checkpoint(trained(), tmp_path / "LAST", CALLER_FIELDS)
    manifest = read_manifest(path)
    assert manifest == json.loads((tmp_path / "LAST.json").read_text())
    for key, value in CALLER_FIELDS.items():
        assert manifest[key] == value
    assert manifest["format"] == "vlcli-checkpoint"
    assert manifest["format_version"] == 1
    assert manifest["vlcli_version"] == vlcli.__version__
    assert manifest["kind"] == "adapter"
    assert manifest["keys"] == sorted(file_keys(path))
    assert manifest["tied"] == {}
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None
    # A bare stem fills the caller fields with empty defaults.
    bare = read_manifest(save_checkpoint(trained(), tmp_path / "bare.safetensors", {}))
    assert bare["backbone"] is None and bare["tasks"] == [] and bare["extra"] == {}


def test_extra_keys_adds_named_buffers(tmp_path):
    path = save_checkpoint(trained(), tmp_path / "x", {}, extra_keys=["frozen_bn.running_mean"])
    assert file_keys(path) == ADAPTER_KEYS | {"frozen_bn.running_mean"}
    with pytest.raises(CheckpointError, match="nope.weight"):
        save_checkpoint(trained(), tmp_path / "y", {}, extra_keys=["nope.weight"])


def test_nothing_trainable_is_an_error(tmp_path):
    model = trained()
    model.requires_grad_(False)
    with pytest.raises(CheckpointError, match="full=True"):
        save_checkpoint(model, tmp_path / "x", {})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- round trip


def test_adapter_round_trip_is_bit_exact(tmp_path):
    source = trained(seed=1)
    path = save_checkpoint(source, tmp_path / "BEST", CALLER_FIELDS)
    target = Tiny(seed=2)
    frozen_before = target.frozen.weight.clone()
    report = load_checkpoint(target, path)
    assert isinstance(report, LoadReport)
    assert set(report.loaded) == ADAPTER_KEYS
    assert report.missing == [] and report.unexpected == [] and report.skipped_shape == []
    assert report.manifest["kind"] == "adapter" and report.kind == "adapter"
    assert_same(source, target, ADAPTER_KEYS)
    assert torch.equal(target.frozen.weight, frozen_before)  # untouched: not in the checkpoint
    assert not torch.equal(target.frozen.weight, source.frozen.weight)


def test_full_round_trip_keeps_tied_weights(tmp_path):
    source = trained(seed=1)
    path = save_checkpoint(source, tmp_path / "full", CALLER_FIELDS, full=True)
    manifest = read_manifest(path)
    assert manifest["kind"] == "full"
    assert manifest["tied"] == {"head.weight": "embed.weight"}
    assert file_keys(path) == set(source.state_dict()) - {"head.weight"}
    target = Tiny(seed=2)
    embed_param = target.embed.weight
    report = load_checkpoint(target, path)
    assert report.missing == [] and report.unexpected == []
    assert set(report.loaded) == set(source.state_dict())
    assert_same(source, target, source.state_dict())
    assert target.head.weight is target.embed.weight is embed_param
    # Still tied after the load: a change to one shows in the other.
    with torch.no_grad():
        target.embed.weight[0, 0] = 123.0
    assert target.head.weight[0, 0].item() == 123.0


def test_full_save_of_views_strided_and_shared_storage(tmp_path):
    class Views(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            base = torch.randn(4, 3)
            self.register_buffer("whole", base)
            self.register_buffer("rows", base[1:])  # another view of the same storage
            self.t = nn.Parameter(torch.randn(3, 5).t())  # not contiguous

    source = Views(1)
    path = save_checkpoint(source, tmp_path / "v", {}, full=True)
    assert read_manifest(path)["tied"] == {}
    target = Views(2)
    load_checkpoint(target, path)
    assert_same(source, target, ["whole", "rows", "t"])


def test_load_keeps_model_dtype_and_device(tmp_path):
    source = trained(seed=1)
    path = save_checkpoint(source, tmp_path / "a", {})
    target = Tiny(seed=2).double()
    load_checkpoint(target, path)
    assert target.adapter.up.weight.dtype == torch.float64
    assert torch.equal(target.adapter.up.weight, source.adapter.up.weight.double())


# --------------------------------------------------------------------------------------- strict


def test_strict_load_lists_missing_keys(tmp_path):
    path = save_checkpoint(trained(), tmp_path / "a", {})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(Tiny(seed=2, n_extra=1), path)
    msg = str(err.value)
    assert "2 missing keys" in msg and "extra.0.weight" in msg and "extra.0.bias" in msg
    assert "allow_partial=True" in msg and "--allow_partial_load" in msg


def test_strict_load_lists_unexpected_keys_first_ten(tmp_path):
    path = save_checkpoint(trained(n_extra=7), tmp_path / "a", {})
    target = Tiny(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(target, path)
    msg = str(err.value)
    assert "14 unexpected keys" in msg and "... and 4 more" in msg and "allow_partial=True" in msg
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing copied


def test_allow_partial_loads_the_rest_and_reports(tmp_path):
    source = trained(seed=1, n_extra=1)
    path = save_checkpoint(source, tmp_path / "a", {})
    target = Tiny(seed=2)
    report = load_checkpoint(target, path, allow_partial=True)
    assert report.unexpected == ["extra.0.bias", "extra.0.weight"]
    assert report.missing == []
    assert set(report.loaded) == ADAPTER_KEYS
    assert_same(source, target, ADAPTER_KEYS)

    path2 = save_checkpoint(trained(seed=3), tmp_path / "b", {})
    target2 = Tiny(seed=2, n_extra=1)
    report2 = load_checkpoint(target2, path2, allow_partial=True)
    assert report2.missing == ["extra.0.bias", "extra.0.weight"]
    assert not report2.complete


def test_full_checkpoint_needs_every_state_key(tmp_path):
    path = save_checkpoint(trained(), tmp_path / "f", {}, full=True)
    with pytest.raises(CheckpointError, match="extra.0.weight"):
        load_checkpoint(Tiny(seed=2, n_extra=1), path)
    report = load_checkpoint(Tiny(seed=2, n_extra=1), path, strict=False)
    assert report.missing == ["extra.0.bias", "extra.0.weight"]


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    source = trained(seed=1, r=2)
    path = save_checkpoint(source, tmp_path / "a", {})
    for strict in (True, False):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(Tiny(seed=2, r=3), path, strict=strict)
        msg = str(err.value)
        assert "adapter.down.weight (checkpoint [2, 6], model [3, 6])" in msg
        assert "adapter.up.weight (checkpoint [6, 2], model [6, 3])" in msg
    target = Tiny(seed=2, r=3)
    report = load_checkpoint(target, path, allow_partial=True)
    assert ("adapter.down.weight", (2, 6), (3, 6)) in report.skipped_shape
    assert {k for k, _, _ in report.skipped_shape} == {
        "adapter.down.weight",
        "adapter.down.bias",
        "adapter.up.weight",
    }
    assert "adapter.up.bias" in report.loaded and "bn.weight" in report.loaded
    assert_same(source, target, ["adapter.up.bias", "bn.weight", "bn.running_var"])


# ----------------------------------------------------------------------------------- original .pth


ORIGINAL_NAMES = {"shared.weight": "embed.weight", "lm_head.weight": "head.weight"}


def _to_original(name: str) -> str:
    for mine, theirs in ((v, k) for k, v in ORIGINAL_NAMES.items()):
        if name == mine:
            return theirs
    return "encoder." + name


def _from_original(name: str) -> str | None:
    if name in ORIGINAL_NAMES:
        return ORIGINAL_NAMES[name]
    if name.startswith("obsolete."):
        return None
    return name.removeprefix("encoder.")


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_original_pth_with_ddp_prefix_and_key_map(tmp_path, wrapper):
    source = trained(seed=1)
    state = {"module." + _to_original(k): v.clone() for k, v in source.state_dict().items()}
    state["module.obsolete.scale"] = torch.ones(2)
    path = tmp_path / "Epoch30.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 30}, path)
    target = Tiny(seed=2)
    report = load_checkpoint(target, path, key_map=_from_original)
    assert report.manifest is None and report.kind == "full"
    assert report.missing == [] and report.unexpected == []
    assert_same(source, target, source.state_dict())
    assert target.head.weight is target.embed.weight
    # Without the key map nothing fits.
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(Tiny(seed=2), path)


def test_pth_without_one_tied_name_is_complete(tmp_path):
    source = trained(seed=1)
    state = {k: v for k, v in source.state_dict().items() if k != "head.weight"}
    torch.save(state, tmp_path / "m.pth")
    target = Tiny(seed=2)
    report = load_checkpoint(target, tmp_path / "m.pth")
    assert report.missing == []
    assert torch.equal(target.head.weight, source.embed.weight)


# ---------------------------------------------------------------------------------------- atomic


def _fail_midway(exc):
    def writer(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise exc

    return writer


@pytest.mark.parametrize(
    "exc,raised",
    [(RuntimeError("disk on fire"), RuntimeError), (OSError(28, "No space left"), CheckpointError)],
)
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, exc, raised):
    monkeypatch.setattr(ckpt, "save_file", _fail_midway(exc))
    with pytest.raises(raised):
        save_checkpoint(trained(), tmp_path / "BEST", {})
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(trained(seed=1), tmp_path / "BEST", {})
    old = (path.read_bytes(), (tmp_path / "BEST.json").read_text())
    monkeypatch.setattr(ckpt, "save_file", _fail_midway(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        save_checkpoint(trained(seed=5), tmp_path / "BEST", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BEST.json", "BEST.safetensors"]
    assert (path.read_bytes(), (tmp_path / "BEST.json").read_text()) == old


def test_unserialisable_manifest_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(trained(), tmp_path / "BEST", {"extra": {"bad": object()}})
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------- manifest


def test_read_manifest_problems_are_one_line_errors(tmp_path):
    path = save_checkpoint(trained(), tmp_path / "c", {})
    mpath = tmp_path / "c.json"
    good = json.loads(mpath.read_text())
    assert read_manifest(tmp_path / "c") == good == read_manifest(mpath)
    assert read_manifest(tmp_path / "none.safetensors") is None
    cases = {
        "not json {": "not readable JSON",
        json.dumps({**good, "format": "other"}): "format 'other'",
        json.dumps({**good, "format_version": 2}): "format_version 2",
    }
    for text, phrase in cases.items():
        mpath.write_text(text)
        with pytest.raises(CheckpointError) as err:
            read_manifest(path)
        msg = str(err.value)
        assert phrase in msg and str(mpath) in msg and "\n" not in msg
        with pytest.raises(CheckpointError):
            load_checkpoint(Tiny(seed=2), path)


def test_manifest_that_does_not_match_the_tensors(tmp_path):
    path = save_checkpoint(trained(), tmp_path / "c", {})
    mpath = tmp_path / "c.json"
    mpath.write_text(json.dumps({**json.loads(mpath.read_text()), "keys": ["x"]}))
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        load_checkpoint(Tiny(seed=2), path)


def test_safetensors_without_manifest_loads(tmp_path):
    source = trained(seed=1)
    path = save_checkpoint(source, tmp_path / "c", {})
    (tmp_path / "c.json").unlink()
    target = Tiny(seed=2)
    report = load_checkpoint(target, path)
    assert report.manifest is None and report.kind == "adapter"
    assert_same(source, target, ADAPTER_KEYS)
