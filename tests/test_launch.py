"""Launchers: what `accelerate launch` passes is honoured, noted or refused (never silently ignored); a launch
that asked for several processes but started one is refused; two torchrun "nodes" make one run, and refuse
--output folders that are not shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli.config.settings import Settings
from vlcli.errors import VlcliError
from vlcli.train.dist import free_port
from vlcli.train.launch import _asked_for, check_launcher

REPO = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).parent / "accelerate"

# What accelerate 1.16's launchers put in the environment (checked against the real launcher on this machine).
SIMPLE = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO",
          "ACCELERATE_DYNAMO_MODE": "default", "ACCELERATE_DYNAMO_USE_FULLGRAPH": "False",
          "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION": "False", "OMP_NUM_THREADS": "1"}
TORCHRUN = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
MULTI = {**{k: v for k, v in SIMPLE.items() if k != "ACCELERATE_USE_CPU"}, **TORCHRUN}
FSDP = {**MULTI, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
        "FSDP_OFFLOAD_PARAMS": "false", "WORLD_SIZE": "1"}
DEEPSPEED = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_CONFIG_DS_FIELDS": "",
             **TORCHRUN}
NO_PARENT = (None, None)
GPU = {"cuda": True, "bf16": True}
CPU = {"cuda": False, "bf16": False}


def settings(**values):
    return Settings.from_flat(values)


def check(env, s=None, parent=NO_PARENT, **device):
    return check_launcher(s or settings(), env, parent=parent, own_args=[], **(device or CPU))


def refused(env, s=None, parent=NO_PARENT, **device) -> str:
    with pytest.raises(VlcliError) as info:
        check(env, s, parent, **device)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


# ------------------------------------------------------------------------------------ plain launches


def test_torchrun_and_a_plain_process_pass_silently():
    assert check({}) == []
    assert check(TORCHRUN) == []
    assert check(TORCHRUN, **GPU) == []


def test_accelerate_multi_gpu_launch_with_its_defaults_passes():
    assert check(MULTI) == []  # CPU: float32 either way
    [note] = check(MULTI, **GPU)  # GPU: vlcli's bf16 autocast, not accelerate's "no": said, not refused
    assert "ACCELERATE_MIXED_PRECISION=no" in note and "bfloat16" in note


# ------------------------------------------------------------------------------------ precision


@pytest.mark.parametrize("value", ["fp16", "FP16"])
def test_fp16_from_accelerate_needs_vlclis_own_flag(value):
    env = {**MULTI, "ACCELERATE_MIXED_PRECISION": value}
    message = refused(env, **GPU)
    assert message.startswith(f"ACCELERATE_MIXED_PRECISION={value}") and "add --fp16" in message
    assert check(env, settings(fp16=True), **GPU) == []  # the same precision: honoured


def test_bf16_is_vlclis_gpu_default_and_refused_where_it_cannot_be():
    env = {**MULTI, "ACCELERATE_MIXED_PRECISION": "bf16"}
    assert check(env, **GPU) == []
    assert "no bfloat16 support" in refused(env, cuda=True, bf16=False)
    assert "contradicts vlcli's --fp16" in refused(env, settings(fp16=True), **GPU)
    assert "float32 on a CPU" in refused(env)
    [note] = check(env, settings(deepspeed="zero2"), **GPU)
    assert "bf16.enabled" in note


def test_no_mixed_precision_is_noted_where_vlcli_uses_half_precision():
    assert check(MULTI) == []
    [note] = check(MULTI, settings(fp16=True), **GPU)
    assert "--fp16 trains in float16" in note
    assert check(MULTI, **{"cuda": True, "bf16": False}) == []  # a GPU without bf16: float32, as asked


def test_fp8_and_unknown_precisions_are_refused():
    assert "no fp8 training" in refused({**MULTI, "ACCELERATE_MIXED_PRECISION": "fp8"}, **GPU)
    assert "not a precision" in refused({**MULTI, "ACCELERATE_MIXED_PRECISION": "fp4"}, **GPU)


def test_fp16_on_a_cpu_is_refused():
    message = refused({**SIMPLE, "ACCELERATE_MIXED_PRECISION": "fp16"}, settings(fp16=True))
    assert "no CUDA GPU" in message and "--mixed_precision no" in message


# ------------------------------------------------------------------------------------ FSDP / DeepSpeed / others


def test_accelerate_fsdp_is_refused_for_vlclis_own_flag():
    message = refused(FSDP)
    assert message.startswith("ACCELERATE_USE_FSDP=true (accelerate launch --use_fsdp)")
    assert "--fsdp" in message and "torchrun --nproc_per_node N -m vlcli ... --fsdp" in message
    refused(FSDP, settings(fsdp=True))  # FSDP_* (offload, wrapping, ...) would still be ignored


@pytest.mark.parametrize("extra, value", [({}, "zero2|zero3|CONFIG.json"),
                                          ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "zero3"),
                                          ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                                            "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "ds.json")])
def test_accelerate_deepspeed_is_refused_naming_the_value_to_pass(extra, value):
    message = refused({**DEEPSPEED, **extra})
    assert message.startswith("ACCELERATE_USE_DEEPSPEED=true") and f"pass --deepspeed {value} to vlcli" in message


def test_deepspeed_stage_1_points_at_a_config():
    assert "zero_optimization.stage 1" in refused({**DEEPSPEED, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"})


def test_accumulation_and_clipping_from_accelerate_must_match_vlclis():
    env = {**MULTI, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4", "ACCELERATE_GRADIENT_CLIPPING": "1.0"}
    message = refused(env)
    assert "pass --gradient_accumulation_steps 4" in message and "pass --clip_grad_norm 1.0" in message
    assert check(env, settings(gradient_accumulation_steps=4, clip_grad_norm=1.0)) == []


def test_megatron_and_parallelism_config_are_refused():
    assert "Megatron-LM" in refused({**MULTI, "ACCELERATE_USE_MEGATRON_LM": "true"})
    assert "tensor / context" in refused({**MULTI, "ACCELERATE_USE_PARALLELISM_CONFIG": "true"})


def test_several_refusals_share_one_line():
    message = refused({**DEEPSPEED, "ACCELERATE_MIXED_PRECISION": "fp16", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "8"},
                      **GPU)
    assert message.count("; ") >= 2 and "ACCELERATE_USE_DEEPSPEED" in message and "add --fp16" in message


def test_dynamo_backend_points_at_compile():
    env = {**MULTI, "ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}
    assert "add --compile" in refused(env)
    assert check(env, settings(compile=True)) == []
    assert "--dynamo_backend no and add --compile" in refused({**env, "ACCELERATE_DYNAMO_BACKEND": "EAGER"},
                                                              settings(compile=True))
    [note] = check({**env, "ACCELERATE_DYNAMO_MODE": "max-autotune"}, settings(compile=True))
    assert "ACCELERATE_DYNAMO_MODE=max-autotune: not applied" in note


def test_cpu_flag_on_a_gpu_machine_is_refused_and_debug_is_noted():
    assert "CUDA_VISIBLE_DEVICES=" in refused({**SIMPLE, "ACCELERATE_MIXED_PRECISION": "bf16"}, **GPU)
    notes = check({**MULTI, "ACCELERATE_DEBUG_MODE": "true", "ACCELERATE_CPU_AFFINITY": "1"})
    assert [n.split("=")[0] for n in notes] == ["ACCELERATE_DEBUG_MODE", "ACCELERATE_CPU_AFFINITY"]


# ------------------------------------------------------------------------------------ one process asked, one started


LAUNCH = [sys.executable, str(ACCELERATE), "launch"]


def test_asked_for_reads_the_launchers_own_options_only():
    own = ["finetune", "vqa", "--output", "x"]
    assert _asked_for([*LAUNCH, "--cpu", "--num_processes", "2", "-m", "vlcli", *own], own) == (2, None)
    assert _asked_for([*LAUNCH, "--num-processes=4", "--num_machines", "2", "train.py", *own], own) == (4, 2)
    assert _asked_for([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "-m", "vlcli"], []) == (None, None)
    assert _asked_for([*LAUNCH, "-m", "vlcli", "--num_processes", "3"], []) == (None, None)  # the script's, not its
    assert _asked_for(["/usr/bin/bash", "run.sh"], []) is None and _asked_for(None, []) is None


def test_cpu_num_processes_2_is_refused():
    """`accelerate launch --cpu --num_processes 2` runs ONE process: no WORLD_SIZE; MASTER_* set by accelerate."""
    env = {**SIMPLE, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    parent = ([*LAUNCH, "--cpu", "--num_processes", "2", "-m", "vlcli"], {"PATH": "/bin"})
    message = refused(env, parent=parent)
    assert message.startswith("accelerate launch --num_processes 2 started ONE process")
    assert "accelerate launch --multi_gpu --num_processes 2" in message and "torchrun --nproc_per_node 2" in message
    # the count in a config file: accelerate set MASTER_PORT (its own environment has none)
    assert "only when asked for several processes" in refused(env, parent=([*LAUNCH, "-m", "vlcli"], {}))
    # MASTER_PORT inherited from the user's environment, one process asked: fine
    assert check(env, parent=([*LAUNCH, "-m", "vlcli"], {"MASTER_PORT": "29500"})) == []
    # unreadable /proc: said, not refused
    [note] = check(env, parent=(None, None))
    assert "MASTER_ADDR / MASTER_PORT" in note
    assert check(SIMPLE, parent=([*LAUNCH, "--cpu", "-m", "vlcli"], {})) == []  # one process asked, one started


def test_several_machines_on_the_simple_launcher_point_at_multi_node():
    env = {**SIMPLE, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29600"}
    message = refused(env, parent=([*LAUNCH, "--cpu", "--num_machines", "2", "--machine_rank", "1", "x.py"], {}))
    assert "--num_machines 2 started ONE process" in message and "torchrun --nnodes M" in message


def test_mpi_ranks_without_torchrun_are_refused():
    assert "OMPI_COMM_WORLD_SIZE=4" in refused({"OMPI_COMM_WORLD_SIZE": "4"})
    assert check({"OMPI_COMM_WORLD_SIZE": "4", **TORCHRUN}) == []  # torchrun under mpirun: its WORLD_SIZE counts


# ------------------------------------------------------------------------------------ through the CLI


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {"data": make_world(root / "datasets"), "t5": make_backbone_dir(root / "t5", "t5")}


def args(world, out):
    return ["--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--feature_type", FEATURE_TYPE,
            "--downsample", "false", "--batch_size", "3", "--num_workers", "0", "--epochs", "1", "--use_adapter",
            "--output", str(out)]


def test_cli_refuses_accelerate_fsdp_before_the_run_directory(cli, world, tmp_path, monkeypatch):
    for name, value in FSDP.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    res = cli("finetune", "vqa", *args(world, out))
    assert res.code == 2
    [line] = [x for x in res.err.splitlines() if x.strip()]
    assert "ACCELERATE_USE_FSDP=true" in line and "--fsdp" in line
    assert not out.exists()


def _env() -> dict[str, str]:
    drop = ("ACCELERATE_", "FSDP_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO)}


@pytest.mark.skipif(not ACCELERATE.is_file(), reason="accelerate is not installed beside this python")
def test_real_accelerate_launches_are_refused(world, tmp_path):
    """`accelerate launch --use_fsdp` and `--cpu --num_processes 2` fail before any model with the one-line error
    (both at once: accelerate takes seconds to start)."""
    runs = {"fsdp": ["--use_fsdp"], "cpu2": ["--cpu", "--num_processes", "2"]}
    procs = {name: subprocess.Popen([str(ACCELERATE), "launch", *flags, "--main_process_port", str(free_port()),
                                     "-m", "vlcli", "finetune", "vqa", *args(world, tmp_path / name)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
             for name, flags in runs.items()}
    errors = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0, err[-2000:]
        errors[name] = [x for x in err.splitlines() if x.startswith("error: ")]
        assert not (tmp_path / name).exists()
    assert errors["fsdp"][0].startswith("error: ACCELERATE_USE_FSDP=true (accelerate launch --use_fsdp)")
    assert errors["cpu2"][0].startswith("error: accelerate launch --num_processes 2 started ONE process")


# ------------------------------------------------------------------------------------ two nodes


def _two_nodes(world, outs: list[Path], timeout: float = 150) -> list[subprocess.CompletedProcess]:
    """Two `torchrun --nnodes 2 --node_rank R --nproc_per_node 1` launches on this machine (static rendezvous:
    node_rank is rank, so rank 1's folder is known)."""
    port = free_port()
    procs = []
    for rank, out in enumerate(outs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "vlcli", "finetune", "vqa", *args(world, out)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                      cwd=out.parent))
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def test_two_nodes_make_one_run_each_example_once(world, tmp_path):
    run = tmp_path / "run"
    node0, node1 = _two_nodes(world, [run, run])
    assert node0.returncode == 0, node0.stderr[-3000:]
    assert node1.returncode == 0, node1.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    ids = [p["id"] for p in json.loads((run / "vqa_karpathy_test_predictions.json").read_text())]
    assert sorted(ids) == [2000, 2001, 2002, 2003]  # 4 test questions over 2 nodes (one padded): each once
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(lines) == 1 and lines[0]["train_samples"] == 12  # rank 0 writes; 6 examples on each node, summed
    assert (node0.stderr + node1.stderr).count("epoch 1:") == 1
    assert not (run / "run.lock").exists()


def test_two_nodes_without_a_shared_output_fail_cleanly(world, tmp_path):
    """Different --output folders (file systems the nodes do not share): every rank stops with the one-line error,
    rank 0 removes the directory it created, rank 1 creates none."""
    outs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    for out in outs:
        out.parent.mkdir()
    results = _two_nodes(world, outs, timeout=90)
    for res in results:
        assert res.returncode != 0
        [line] = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
        assert "not visible from every process" in line and "rank 1 on" in line
    assert not outs[0].exists() and not outs[1].exists()
