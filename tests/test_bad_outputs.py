"""Outputs that cannot be written: one line, exit 2, and what was there before stays intact."""

from __future__ import annotations

import errno

import pytest

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world


def test_demo_data_under_a_file_is_one_line(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    res = cli("demo-data", str(tmp_path / "file" / "world"))
    assert res.code == 2 and "is a file" in res.err and len(res.err.strip().splitlines()) == 1


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(cli, tmp_path, monkeypatch):
    """ENOSPC on the epoch-2 save (the OS refusing, simulated at the file write): epoch 1's LAST stays intact."""
    data, t5 = make_world(tmp_path / "datasets"), make_backbone_dir(tmp_path / "t5", "t5")
    args = ["finetune", "vqa", "--backbone", str(t5), "--data_root", str(data), "--feature_type", FEATURE_TYPE,
            "--batch_size", "4", "--use_adapter", "--output", str(tmp_path / "run")]
    assert cli(*args, "--epochs", "1").code == 0
    last = (tmp_path / "run" / "LAST.safetensors").read_bytes()
    state = (tmp_path / "run" / "LAST.state.pt").read_bytes()

    import vlcli.model.checkpoint as checkpoint

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    res = cli("finetune", "--output", str(tmp_path / "run"), "--resume", "--epochs", "2")
    assert res.code == 2
    assert "No space left on device" in res.err and "LAST.safetensors" in res.err
    assert (tmp_path / "run" / "LAST.safetensors").read_bytes() == last
    assert (tmp_path / "run" / "LAST.state.pt").read_bytes() == state
    assert not list((tmp_path / "run").glob("*.tmp")) and not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_eval_output_that_cannot_be_a_folder_is_one_line(cli, tmp_path, kind):
    (tmp_path / "f").write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "BEST.safetensors").write_bytes(b"0")
    out = tmp_path / "f" if kind == "file" else tmp_path / "f" / "sub"
    res = cli("eval", "vqa", "--load", str(run), "--output", str(out), "--backbone", "t5-small")
    assert res.code == 2 and "is a file" in res.err
