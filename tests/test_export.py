"""vlcli export: PEFT-format LoRA adapters that peft loads with vlcli's exact logits; vlcli format round trip."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world

peft = pytest.importorskip("peft", reason="the peft extra is not installed (pip install -e '.[peft]')")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {"data": make_world(root / "datasets"), "t5": make_backbone_dir(root / "t5", "t5"),
            "bart": make_backbone_dir(root / "bart", "bart"), "root": root}


def train(world, name, task, *extra, family="t5"):
    from vlcli.cli.main import main

    run = world["root"] / name
    if not run.exists():
        args = ["finetune", task, "--backbone", str(world[family]), "--data_root", str(world["data"]),
                "--feature_type", FEATURE_TYPE, "--batch_size", "4", "--epochs", "1", "--lr", "5e-3",
                "--output", str(run), *extra]
        assert main(args) == 0
    return run


def text_logits(module, task=None):
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 60, (2, 7), generator=g)
    decoder_input_ids = torch.randint(5, 60, (2, 4), generator=g)
    with torch.no_grad():
        return module(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits


def vlcli_logits(run, task):
    from vlcli.export.peft_format import _rebuild

    _, model, _ = _rebuild(run, run / "BEST.safetensors")
    with model.router.scope(task):
        return text_logits(model.lm)


def peft_base(world, out, family="t5"):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    base = AutoModelForSeq2SeqLM.from_pretrained(str(world[family]))
    base.resize_token_embeddings(len(tokenizer))
    return base.eval()


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_single_lora_exports_to_peft_with_the_same_logits(cli, world, tmp_path, family):
    """The paper's single-LoRA recipe (--adapter lora: rank, alpha and trained biases, which BART has)."""
    run = train(world, f"single-{family}", "vqa", "--adapter", "lora", "--lora_dim", "4", family=family)
    out = tmp_path / "peft"
    res = cli("export", str(run), "--format", "peft", "--out", str(out))
    assert res.code == 0, res.err
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "visual_embedding.safetensors"} <= \
        {p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    assert config["target_modules"] == (["q", "v"] if family == "t5" else ["q_proj", "v_proj"])
    assert config["bias"] == ("none" if family == "t5" else "all")  # T5 has no biases to train
    base = peft_base(world, out, family)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter_model.safetensors"))
    lora = {k for k in saved if "lora_" in k}
    assert lora and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in lora)
    loaded = dict(model.named_parameters())
    for key in lora:  # every saved LoRA tensor landed in the model, under the default adapter
        name = key.replace("lora_A.weight", "lora_A.default.weight").replace("lora_B.weight", "lora_B.default.weight")
        assert torch.equal(loaded[name].detach(), saved[key]), key
    assert len(before) > 0
    torch.testing.assert_close(text_logits(model), vlcli_logits(run, "vqa"), rtol=0, atol=1e-6)
    card = (out / "README.md").read_text()
    assert "lora (single)" in card and "best validation score" in card and "vlcli finetune vqa" in card


def test_per_task_lora_exports_one_named_adapter_per_task(cli, world, tmp_path):
    run = train(world, "multi", "multitask", "--tasks", "vqa,gqa", "--use_lora", "--use_single_lora", "false",
                "--lora_dim", "4")
    out = tmp_path / "peft"
    res = cli("export", str(run), "--format", "peft", "--out", str(out))
    assert res.code == 0, res.err
    assert (out / "vqa" / "adapter_model.safetensors").is_file() and (out / "gqa" / "adapter_config.json").is_file()
    model = peft.PeftModel.from_pretrained(peft_base(world, out), str(out / "vqa"), adapter_name="vqa").eval()
    result = model.load_adapter(str(out / "gqa"), adapter_name="gqa")
    assert result.unexpected_keys == []
    for task in ("vqa", "gqa"):
        model.set_adapter(task)
        torch.testing.assert_close(text_logits(model), vlcli_logits(run, task), rtol=0, atol=1e-6)
    assert not torch.equal(vlcli_logits(run, "vqa"), vlcli_logits(run, "gqa"))  # the adapters really differ


def test_methods_peft_lacks_are_refused_and_vlcli_format_round_trips(cli, world, tmp_path):
    run = train(world, "adapter", "vqa", "--use_adapter", "--reduction_factor", "4")
    res = cli("export", str(run), "--format", "peft", "--out", str(tmp_path / "p"))
    assert res.code == 2 and "bottleneck adapters" in res.err and "--format vlcli" in res.err
    assert not (tmp_path / "p").exists()
    out = tmp_path / "v"
    assert cli("export", str(run), "--out", str(out)).code == 0
    original = cli("eval", "--test_only", "--load", str(run), "--json")
    exported = cli("eval", "--test_only", "--load", str(out), "--json")
    assert original.code == exported.code == 0, exported.err
    assert json.loads(exported.out) == json.loads(original.out)
    assert "PEFT's adapter format has no equivalent" in (out / "README.md").read_text()
    res = cli("export", str(run), "--out", str(out))
    assert res.code == 2 and "not empty" in res.err
