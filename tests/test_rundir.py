"""The run directory contract: existing runs refused, --overwrite / --resume, the lock, SIGTERM, crash-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli.train.engine import TIMING_KEYS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {"data": make_world(root / "datasets"), "t5": make_backbone_dir(root / "t5", "t5")}


def args(world, run: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ["finetune", "vqa", "--backbone", str(world["t5"]), "--data_root", str(world["data"]),
            "--feature_type", FEATURE_TYPE, "--batch_size", "4", "--use_adapter", "--reduction_factor", "4",
            "--lr", "3e-3", "--epochs", str(epochs), "--output", str(run), *extra]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time (ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    differ = [k for k in left if not torch.equal(left[k], right[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """One finished 2-epoch run (3 steps per epoch), used read-only by several tests."""
    from vlcli.cli.main import main

    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(args(world, run)) == 0
    return run


def test_a_second_run_into_the_same_output_is_refused_and_changes_nothing(cli, world, finished):
    before = snapshot(finished)
    res = cli(*args(world, finished))
    assert res.code == 2
    assert "already holds a run" in res.err and "--resume" in res.err and "--overwrite" in res.err
    assert len([x for x in res.err.strip().splitlines() if x.strip()]) == 1
    assert snapshot(finished) == before


def test_config_json_records_where_the_run_came_from(finished):
    config = json.loads((finished / "config.json").read_text())
    run = config["_run"]
    assert run["command"] == "finetune" and "finetune" in run["argv"] and "--use_adapter" in run["argv"]
    assert run["torch"] == torch.__version__ and run["vlcli"] and run["transformers"] and run["host"]
    assert run["started"].endswith("+00:00")
    if (REPO / ".git").exists():
        assert len(run["git"]["commit"]) == 40
    assert config["resumes"] == []
    assert config["epochs"] == 2 and config["tasks"] == "vqa"
    rows = records(finished)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all("time" in r and r["elapsed_s"] > 0 for r in rows)
    assert not (finished / "run.lock").exists()


def test_overwrite_replaces_the_run_and_keeps_other_files(cli, world, tmp_path, finished):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("mine")
    old = json.loads((run / "config.json").read_text())
    res = cli(*args(world, run, 1, "--overwrite"))
    assert res.code == 0, res.err
    assert (run / "notes.txt").read_text() == "mine"
    assert [r["epoch"] for r in records(run)] == [0]
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    assert json.loads((run / "config.json").read_text())["_run"]["argv"] != old["_run"]["argv"]


def test_resume_with_changed_settings_is_refused_listing_them(cli, world, finished):
    before = snapshot(finished)
    res = cli("finetune", "--output", str(finished), "--resume", "--lr", "0.5", "--reduction_factor", "2")
    assert res.code == 2
    assert "--lr 0.5" in res.err and "--reduction_factor 2" in res.err and "--epochs" in res.err
    assert snapshot(finished) == before


def test_resume_of_a_finished_run_writes_nothing(cli, finished):
    before = snapshot(finished)
    res = cli("finetune", "--output", str(finished), "--resume")
    assert res.code == 0, res.err
    assert "nothing to resume" in res.err
    assert snapshot(finished) == before


def test_resume_reads_the_run_config_and_records_allowed_changes(cli, world, tmp_path):
    run = tmp_path / "run"
    assert cli(*args(world, run, 1)).code == 0
    config = json.loads((run / "config.json").read_text())
    res = cli("finetune", "--output", str(run), "--resume", "--epochs", "2")  # no TASK, no other flag
    assert res.code == 0, res.err
    assert [r["epoch"] for r in records(run)] == [0, 1]
    after = json.loads((run / "config.json").read_text())
    assert {k: v for k, v in after.items() if k != "resumes"} == {k: v for k, v in config.items() if k != "resumes"}
    assert len(after["resumes"]) == 1
    assert after["resumes"][0]["changed"] == {"epochs": [1, 2]} and after["resumes"][0]["mode"] == "resume"


def test_resume_on_an_empty_output_starts_from_the_beginning(cli, world, tmp_path):
    run = tmp_path / "fresh"
    res = cli(*args(world, run, 1, "--resume"))
    assert res.code == 0, res.err
    assert "starting the run from the beginning" in res.err
    assert [r["epoch"] for r in records(run)] == [0]


def test_a_live_lock_refuses_and_a_stale_lock_is_taken_over(cli, world, tmp_path):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock = {"pid": sleeper.pid, "host": socket.gethostname(), "command": "finetune", "started": "earlier"}
        (run / "run.lock").write_text(json.dumps(lock))
        before = snapshot(run)
        res = cli(*args(world, run, 1))
        assert res.code == 2
        assert f"pid {sleeper.pid}" in res.err and "in use" in res.err
        assert snapshot(run) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    res = cli(*args(world, run, 1))  # the same lock, its process now dead
    assert res.code == 0, res.err
    assert "stale run lock" in res.err
    assert not (run / "run.lock").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_output_that_cannot_be_a_directory_is_one_line(cli, world, tmp_path, where):
    target = tmp_path / "taken"
    target.write_text("x")
    out = target if where == "file" else target / "run"
    res = cli(*args(world, out, 1))
    assert res.code == 2
    assert "is a file" in res.err and str(target) in res.err
    assert "Traceback" not in res.err
    assert target.read_text() == "x"


def _subprocess(argv: list[str], **env: str) -> subprocess.Popen:
    environment = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "vlcli", *argv], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_a_resumable_state_and_exits_143(cli, world, tmp_path):
    run = tmp_path / "run"
    proc = _subprocess(args(world, run, 50))
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert "--resume" in err
    state = torch.load(run / "LAST.state.pt", weights_only=False)
    assert state["position"]["epoch"] >= 1
    res = cli("finetune", "--output", str(run), "--resume", "--epochs", str(state["position"]["epoch"] + 1))
    assert res.code == 0, res.err


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The uninterrupted 3-epoch run the crash tests compare against."""
    from vlcli.cli.main import main

    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(args(world, run, 3)) == 0
    return run


@pytest.mark.parametrize("point", ["step:2", "last:0", "step:5", "best:0"])
def test_killed_anywhere_then_resumed_is_bit_identical(cli, world, tmp_path, reference, point):
    """SIGKILL (no chance to save) mid-epoch, right after an epoch-end checkpoint, right after BEST."""
    run = tmp_path / "run"
    proc = _subprocess(args(world, run, 3), VLCLI_KILL_AT=point)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    res = cli("finetune", "--output", str(run), "--resume")
    assert res.code == 0, res.err
    assert_same_weights(reference / "LAST.safetensors", run / "LAST.safetensors")
    assert_same_weights(reference / "BEST.safetensors", run / "BEST.safetensors")
    assert without_timings(records(run)) == without_timings(records(reference))


def test_ctrl_c_at_an_epoch_end_then_resume_is_bit_identical(world, tmp_path, reference):
    """An in-process interruption exactly at the last step of an epoch (the resume state's epoch boundary)."""
    from vlcli import api
    from vlcli.train.engine import Engine, Interrupted

    settings = api.load_settings(task="vqa", backbone=str(world["t5"]), data_root=str(world["data"]),
                                 feature_type=FEATURE_TYPE, batch_size=4, use_adapter=True, reduction_factor=4,
                                 lr=3e-3, epochs=3, output=str(tmp_path / "run"))
    with pytest.raises(Interrupted):
        Engine(settings).fit(stop_after_steps=3)
    Engine(settings).fit(resume=True)
    assert_same_weights(reference / "LAST.safetensors", tmp_path / "run" / "LAST.safetensors")
    assert without_timings(records(tmp_path / "run")) == without_timings(records(reference))
