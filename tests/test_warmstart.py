"""Warm start (`finetune/pretrain --load`): a pretrained checkpoint initialises a run that adds PEFT modules."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_pretrain import cli_args, write_pretraining_data
from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli import api
from vlcli.cli.main import main
from vlcli.model.original import to_original_key
from vlcli.model.warmstart import sha256_of, warm_start


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    data = make_world(root / "datasets")
    write_pretraining_data(data)
    return {"data": data, "t5": make_backbone_dir(root / "t5", "t5"), "root": root}


@pytest.fixture(scope="module")
def pretrained(world):
    """Two pretraining runs: the full model (lm,qa) and per-task adapters (task key "pretrain")."""
    runs = {"full": world["root"] / "pt-full", "adapters": world["root"] / "pt-adapters"}
    assert main([*cli_args(world, runs["full"]), "--losses", "lm,qa", "--unfreeze_language_model"]) == 0
    assert main([*cli_args(world, runs["adapters"]), "--losses", "lm,qa", "--use_adapter", "--reduction_factor", "4"]) == 0
    return runs


def vqa(world, out, *extra):
    return ["finetune", "vqa", "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--feature_type",
            FEATURE_TYPE, "--downsample", "false", "--batch_size", "4", "--epochs", "1", "--submit", "false",
            "--output", str(out), *extra]


def test_a_pretrained_full_model_warm_starts_lora_without_any_flag(cli, world, pretrained, tmp_path):
    ckpt = pretrained["full"] / "BEST.safetensors"
    res = cli(*vqa(world, tmp_path / "lora", "--use_lora", "--load", str(pretrained["full"] / "BEST")))
    assert res.code == 0, res.err
    assert "Warm start from" in res.err and "starts fresh" in res.err
    init = json.loads((tmp_path / "lora/config.json").read_text())["_run"]["init"]
    assert init["path"] == str(ckpt) and init["sha256"] == sha256_of(ckpt)
    assert init["fresh_groups"] == ["LoRA"] and init["ignored"] == 0 and init["loaded_tensors"] > 20
    # every pretrained tensor is in the model; only LoRA started from its initialisation
    settings = api.load_settings(task="vqa", backbone=str(world["t5"]), feature_type=FEATURE_TYPE, use_lora=True)
    model = api.build_model(settings)
    report = warm_start(model, ckpt, settings)
    state = model.state_dict()
    saved = load_file(str(ckpt))
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    assert {g for g, c in report.groups.items() if c.get("fresh")} == {"LoRA"}
    # BEST holds LoRA + the visual embedding; its manifest names the warm start, which eval applies first
    assert json.loads((tmp_path / "lora/BEST.json").read_text())["init"]["sha256"] == init["sha256"]
    res = cli("eval", "vqa", "--load", str(tmp_path / "lora/BEST"), "--json")
    assert res.code == 0, res.err
    tested = json.loads((tmp_path / "lora/test_metrics.json").read_text())
    assert json.loads(res.out)["test/vqa"]["accuracy"] == tested["test/vqa"]["accuracy"]


def test_a_changed_init_checkpoint_is_named_when_loading_the_run(cli, world, pretrained, tmp_path):
    init = tmp_path / "pt"
    init.mkdir()
    for suffix in (".safetensors", ".json"):
        (init / f"BEST{suffix}").write_bytes((pretrained["full"] / f"BEST{suffix}").read_bytes())
    res = cli(*vqa(world, tmp_path / "lora", "--use_lora", "--load", str(init / "BEST")))
    assert res.code == 0, res.err
    (init / "BEST.safetensors").rename(init / "moved.safetensors")
    res = cli("eval", "vqa", "--load", str(tmp_path / "lora/BEST"))
    assert res.code == 2 and "no longer exists" in res.err and str(init / "BEST.safetensors") in res.err


def test_a_checkpoint_missing_a_backbone_tensor_is_refused_by_name(cli, world, pretrained, tmp_path):
    src = pretrained["full"] / "BEST"
    state = load_file(f"{src}.safetensors")
    dropped = "lm.encoder.block.0.layer.1.DenseReluDense.wi.weight"
    del state[dropped]
    manifest = json.loads(src.with_suffix(".json").read_text())
    manifest["keys"] = sorted(state)
    save_file(state, str(tmp_path / "cut.safetensors"))
    (tmp_path / "cut.json").write_text(json.dumps(manifest))
    res = cli(*vqa(world, tmp_path / "run", "--use_lora", "--load", str(tmp_path / "cut")))
    assert res.code == 2 and dropped in res.err and "should hold but lacks" in res.err
    assert not (tmp_path / "run").exists()
    res = cli(*vqa(world, tmp_path / "partial", "--use_lora", "--load", str(tmp_path / "cut"), "--allow_partial_load"))
    assert res.code == 0, res.err
    assert dropped in res.err and "not loaded" in res.err


def test_per_task_modules_move_to_a_task_only_through_init_task_map(cli, world, pretrained, tmp_path):
    load = ["--use_adapter", "--reduction_factor", "4", "--load", str(pretrained["adapters"] / "LAST")]
    res = cli(*vqa(world, tmp_path / "plain", *load))
    assert res.code == 2 and "--init_task_map pretrain=vqa" in res.err
    res = cli(*vqa(world, tmp_path / "mapped", *load, "--init_task_map", "pretrain=vqa"))
    assert res.code == 0, res.err
    init = json.loads((tmp_path / "mapped/config.json").read_text())["_run"]["init"]
    assert init["fresh_groups"] == [] and init["task_map"] == {"pretrain": ["vqa"]}
    res = cli(*vqa(world, tmp_path / "bad", *load, "--init_task_map", "pretrain=gqa"))
    assert res.code == 2 and "--init_task_map pretrain=gqa: target gqa is not a task of this run" in res.err


def test_modules_of_a_method_the_run_lacks_are_refused(cli, world, pretrained, tmp_path):
    res = cli(*vqa(world, tmp_path / "lora", "--use_lora", "--load", str(pretrained["adapters"] / "LAST"),
                   "--init_task_map", "pretrain=vqa"))
    assert res.code == 2 and "the checkpoint's run used use_adapter=True" in res.err


def test_an_original_vl_t5_pth_warm_starts_an_adapter_run(cli, world, tmp_path):
    settings = api.load_settings(task="vqa", backbone=str(world["t5"]), feature_type=FEATURE_TYPE)
    torch.manual_seed(3)
    source = api.build_model(settings)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.5)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    torch.save({"module." + to_original_key(k, "t5"): v for k, v in state.items()}, tmp_path / "Epoch30.pth")
    res = cli(*vqa(world, tmp_path / "run", "--use_adapter", "--load", str(tmp_path / "Epoch30.pth")))
    assert res.code == 0, res.err
    init = json.loads((tmp_path / "run/config.json").read_text())["_run"]["init"]
    assert init["kind"] == "original" and init["fresh_groups"] == ["adapters"]


def test_eval_load_stays_exact(cli, world, pretrained, tmp_path):
    res = cli("eval", "vqa", "--load", str(pretrained["full"] / "BEST"), "--data_root", str(world["data"]),
              "--feature_type", FEATURE_TYPE, "--use_lora", "--output", str(tmp_path / "e"))
    assert res.code == 2 and "method settings differ" in res.err


def test_peft_export_of_a_warm_started_run_carries_its_base_weights(cli, world, pretrained, tmp_path):
    """LoRA trained on the pretrained weights: the PEFT export saves them as base/ (the --backbone is not the base),
    and PeftModel on that base gives vlcli's text logits."""
    peft = pytest.importorskip("peft", reason="the peft extra is not installed (pip install -e '.[peft]')")
    from transformers import AutoModelForSeq2SeqLM

    from tests.test_export import text_logits, vlcli_logits

    run = tmp_path / "lora"
    assert cli(*vqa(world, run, "--use_lora", "--lora_dim", "4", "--load", str(pretrained["full"] / "BEST"))).code == 0
    out = tmp_path / "peft"
    res = cli("export", str(run), "--format", "peft", "--out", str(out))
    assert res.code == 0, res.err
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out / "base")
    card = (out / "README.md").read_text()
    assert "warm-start checkpoint" in card and str(pretrained["full"] / "BEST.safetensors") in card
    base = AutoModelForSeq2SeqLM.from_pretrained(str(out / "base")).eval()
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    torch.testing.assert_close(text_logits(model), vlcli_logits(run, "vqa"), rtol=0, atol=1e-6)
    # the backbone as base would not give them: the pretrained weights matter
    plain = AutoModelForSeq2SeqLM.from_pretrained(str(world["t5"]))
    plain.resize_token_embeddings(base.get_input_embeddings().num_embeddings)
    other = peft.PeftModel.from_pretrained(plain.eval(), str(out)).eval()
    assert not torch.allclose(text_logits(other), text_logits(model), atol=1e-3)
