"""Outputs that cannot be written: one line, exit 2, and what was there before stays intact."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
import torch

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli.atomic import WriteError, atomic_write, write_json


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
    assert "No space left on device" in res.err and "LAST.safetensors" in res.err and "free space" in res.err
    assert len(res.err.strip().splitlines()) == 1, res.err
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


# ------------------------------------------------------------------------------ the write primitives


def old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"previous": True})
    return target, target.read_bytes()


def assert_intact(folder, target, before):
    assert target.read_bytes() == before
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target, before = old_file(tmp_path)

    def full_disk(tmp):
        tmp.write_bytes(b"half of the new file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as err:
        atomic_write(target, full_disk)
    assert str(err.value) == f"{target}: cannot write (No space left on device); free space on that disk or write to another one"
    assert_intact(tmp_path, target, before)


def test_a_full_disk_while_writing_consolidated_features_keeps_the_previous_file(tmp_path, monkeypatch):
    import numpy as np

    from vlcli.data import features

    target = tmp_path / "feats.h5"
    features.write_consolidated(target, {"a": np.zeros((2, 3), np.float32)})
    before = target.read_bytes()

    def full_disk(f, pairs, dtype, path):
        f.create_group("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(features, "_write_items", full_disk)
    with pytest.raises(WriteError, match=r"feats\.h5: cannot write \(No space left on device\); free space"):
        features.write_consolidated(target, {"b": np.ones((2, 3), np.float32)})
    assert_intact(tmp_path, target, before)


def test_an_error_about_another_file_is_not_reported_as_the_output(tmp_path):
    """Reading an input inside the write is the caller's error, not a write error of the output."""
    target, before = old_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        atomic_write(target, lambda tmp: tmp.write_text((tmp_path / "no-such-input.txt").read_text()))
    assert_intact(tmp_path, target, before)


@pytest.mark.parametrize(("where", "fix"), [
    ("file/out.json", "a file is in the way of a folder"),  # the folder of the output is a file (EEXIST)
    ("file/sub/out.json", "a component of the path is a file"),  # ENOTDIR
    ("folder", "a folder is in the way of the file"),  # EISDIR: the target is a folder
    ("x" * 300 + ".json", "choose a shorter file or folder name"),  # ENAMETOOLONG
])
def test_an_output_the_os_refuses_is_one_line_naming_it(tmp_path, where, fix):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "kept").write_text("kept")
    target = tmp_path / where
    with pytest.raises(WriteError) as err:
        write_json(target, {"new": True})
    message = str(err.value)
    assert message.startswith(f"{target}: cannot write (") and f"); {fix}" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert (tmp_path / "file").read_text() == "x" and (tmp_path / "folder" / "kept").read_text() == "kept"


def test_a_checkpoint_under_a_file_is_one_line(tmp_path):
    from vlcli.model.checkpoint import save_checkpoint

    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=r"file: cannot write \(File exists\); a file is in the way of a folder"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "file" / "BEST", {})


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write to: chmod for a normal user; as root (which chmod does not stop) a read-only
    bind mount of it onto itself, or a skip when mounting is not allowed here."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "out.json").write_text('{"previous": true}')
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"running as root and no read-only bind mount is possible here: {mount.stderr.decode().strip()}")
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("a read-only bind mount is still writable here")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_keeps_the_previous_file(read_only_dir):
    target = read_only_dir / "out.json"
    before = target.read_bytes()
    with pytest.raises(WriteError, match=rf"{target}: cannot write \(.*\); (choose a folder you may write to|the file "
                                         r"system is read-only; choose a writable folder)$"):
        write_json(target, {"new": True})
    assert_intact(read_only_dir, target, before)


def test_demo_data_into_a_read_only_folder_is_one_line(cli, read_only_dir):
    res = cli("demo-data", str(read_only_dir / "world"))
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert str(read_only_dir) in res.err and "not writable" in res.err
    assert sorted(p.name for p in read_only_dir.iterdir()) == ["out.json"]


def test_demo_data_onto_a_file_is_one_line(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    res = cli("demo-data", str(tmp_path / "file"))
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "is a file" in res.err
    assert (tmp_path / "file").read_text() == "x"
