import os
import time

import pytest

from vlcli.config.load import resolve_load, run_config_for
from vlcli.errors import CheckpointNotFoundError


def touch(path, mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"0")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_none_stays_none(tmp_path):
    assert resolve_load(None, tmp_path) is None


def test_run_directory_prefers_best_then_last(tmp_path):
    last = touch(tmp_path / "run" / "LAST.safetensors")
    assert resolve_load(str(tmp_path / "run"), tmp_path) == last
    best = touch(tmp_path / "run" / "BEST.pth")
    assert resolve_load(str(tmp_path / "run"), tmp_path) == best
    best_st = touch(tmp_path / "run" / "BEST.safetensors")
    assert resolve_load(str(tmp_path / "run"), tmp_path) == best_st


def test_path_without_extension_like_the_original(tmp_path):
    pth = touch(tmp_path / "Epoch30.pth")
    assert resolve_load(str(tmp_path / "Epoch30"), tmp_path) == pth
    st = touch(tmp_path / "Epoch30.safetensors")
    assert resolve_load(str(tmp_path / "Epoch30"), tmp_path) == st
    assert resolve_load(str(pth), tmp_path) == pth


def test_auto_picks_latest_in_output(tmp_path):
    now = time.time()
    touch(tmp_path / "Epoch01.safetensors", now - 100)
    newest = touch(tmp_path / "LAST.safetensors", now)
    touch(tmp_path / "notes.txt", now + 10)
    assert resolve_load("auto", tmp_path) == newest


def test_auto_without_checkpoints_lists_folder(tmp_path):
    touch(tmp_path / "metrics.jsonl")
    with pytest.raises(CheckpointNotFoundError) as exc:
        resolve_load("auto", tmp_path)
    assert "no checkpoint" in str(exc.value) and "metrics.jsonl" in str(exc.value)


def test_missing_lists_tried_and_existing(tmp_path):
    touch(tmp_path / "LAST.pth")
    with pytest.raises(CheckpointNotFoundError) as exc:
        resolve_load(str(tmp_path / "BEST"), tmp_path)
    msg = str(exc.value)
    assert f"{tmp_path}/BEST.safetensors" in msg and f"{tmp_path}/BEST.pth" in msg and "LAST.pth" in msg


def test_empty_run_directory(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no BEST or LAST checkpoint"):
        resolve_load(str(tmp_path / "run"), tmp_path)


def test_run_config_for(tmp_path):
    ckpt = touch(tmp_path / "BEST.safetensors")
    assert run_config_for(ckpt) is None
    (tmp_path / "config.json").write_text("{}")
    assert run_config_for(ckpt) == tmp_path / "config.json"
