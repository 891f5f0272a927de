"""PEFT methods: the paper's trainable percentages, gradients, task routing, checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.peft.adapters import AdapterController, PHMLinear

FEAT = 16
TASKS = "vqa,gqa"

PAPER = {
    "full_finetuning": 100.0,
    "multiple_adapters": 12.22,
    "half_shared_adapters": 8.36,
    "single_adapter": 4.18,
    "hyperformer": 5.79,
    "multiple_compacters": 7.05,
    "single_compacter": 2.70,
    "multiple_lora": 17.71,
    "single_lora": 5.93,
    "multiple_prompts": 4.53,
    "single_prompt": 2.00,
}


@pytest.mark.parametrize(("profile", "percent"), PAPER.items())
def test_paper_trainable_percentages_on_bart_base(cli, profile, percent):
    res = cli(
        "inspect-config", "multitask", "--profile", profile, "--backbone", "facebook/bart-base", "--json"
    )
    assert res.code == 0, res.err
    params = json.loads(res.out)["parameters"]
    assert round(params["percent"], 2) == percent


METHODS = {
    "adapter": {"use_adapter": True, "reduction_factor": 4},
    "single_adapter": {
        "use_adapter": True,
        "use_single_adapter": True,
        "reduction_factor": 4,
        "add_layer_norm_before_adapter": True,
        "add_layer_norm_after_adapter": True,
    },
    "half_shared": {
        "use_adapter": True,
        "share_up_sampler": True,
        "reduction_factor": 4,
        "add_adapter_cross_attn": True,
    },
    "compacter": {
        "use_compacter": True,
        "reduction_factor": 4,
        "hypercomplex_division": 2,
        "shared_phm_rule": False,
        "factorized_phm": False,
    },
    "compacter_shared_rule": {
        "use_compacter": True,
        "reduction_factor": 4,
        "shared_phm_rule": True,
        "factorized_phm": True,
        "phm_rank": 2,
    },
    "lradapter": {"use_lradapter": True, "reduction_factor": 4, "low_rank_rank": 2},
    "hyperformer": {
        "use_hyperformer": True,
        "unique_hyper_net": True,
        "projected_task_embedding_dim": 8,
        "reduction_factor": 4,
    },
    "efficient_hyperformer": {
        "use_hyperformer": True,
        "efficient_unique_hyper_net": True,
        "reduction_factor": 4,
        "add_layer_norm_before_adapter": True,
    },
    "lora": {"use_lora": True, "lora_dim": 4, "lora_train_biases": True},
    "single_lora": {"use_lora": True, "lora_dim": 4, "use_single_lora": True},
    "prompts": {"encoder_prompt_len": 3, "mid_dim": 8},
    "single_prompt": {"encoder_prompt_len": 3, "mid_dim": 8, "use_single_prompt": True},
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    return {fam: make_backbone_dir(root / fam, fam) for fam in ("t5", "bart")}


def make(dirs, family, method, seed=0):
    settings = api.load_settings(
        task="multitask",
        tasks=TASKS,
        backbone=str(dirs[family]),
        feat_dim=FEAT,
        dropout=0.0,
        **METHODS[method],
    )
    torch.manual_seed(seed)
    model = api.build_model(settings)
    tok = api.build_tokenizer(settings)
    return settings, model, tok


def batch(tok):
    enc = tok.batch_encode(["what color is the cube", "is there a ball"])
    labels = tok.batch_encode(["red", "yes"])["input_ids"]
    g = torch.Generator().manual_seed(0)
    return enc, labels, torch.randn(2, 4, FEAT, generator=g), torch.rand(2, 4, 4, generator=g)


def perturb(model):
    """Move the trainable parameters away from their (partly zero) initialisation."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_exactly_the_trainable_set_and_tasks_route(dirs, family, method):
    _, model, tok = make(dirs, family, method)
    model.train()
    perturb(model)
    enc, labels, feats, boxes = batch(tok)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    peft = {n for n in trainable if not n.startswith("visual_embedding.") and not n.endswith(".bias")}
    assert peft, "the method added no trainable parameters"
    for task in ("vqa", "gqa"):
        model.zero_grad(set_to_none=True)
        model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task=task).loss.backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got <= trainable  # frozen parameters never receive gradients
        other = "gqa" if task == "vqa" else "vqa"
        # modules registered under task 0's name but used by every task
        shared_part = {"half_shared": ".up_sampler.", "compacter_shared_rule": ".rule"}.get(method)
        untouched = [n for n in got if f".{other}." in n and not (shared_part and shared_part in n)]
        assert not untouched  # the other task's modules get no gradient
        assert any(n in got for n in peft)
    model.eval()
    out = {
        t: model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task=t).logits
        for t in ("vqa", "gqa")
    }
    if "single" in method:
        assert torch.equal(out["vqa"], out["gqa"])
    else:
        assert not torch.equal(out["vqa"], out["gqa"])


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("method", METHODS)
def test_adapter_only_round_trip_is_exact(dirs, family, method, tmp_path):
    settings, model, tok = make(dirs, family, method, seed=1)
    perturb(model)
    model.eval()
    enc, labels, feats, boxes = batch(tok)
    want = model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="gqa").logits
    path = api.save_checkpoint(model, tmp_path / "BEST", settings=settings)
    _, fresh, _ = make(dirs, family, method, seed=2)
    fresh.eval()
    assert api.load_checkpoint(fresh, path, settings=settings).complete
    got = fresh(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="gqa").logits
    assert torch.equal(got, want)


def test_sharing_modes_share_module_objects(dirs):
    _, model, _ = make(dirs, "bart", "half_shared")
    controllers = [m for m in model.modules() if isinstance(m, AdapterController)]
    assert (
        len(controllers) == 2 * 2 + 2 * 3
    )  # BART: 2 slots per encoder layer, 3 per decoder layer (cross-attn on)
    c = controllers[0]
    assert c.adapters["vqa"].up_sampler is c.adapters["gqa"].up_sampler
    assert c.adapters["vqa"].down_sampler is not c.adapters["gqa"].down_sampler
    _, model, _ = make(dirs, "t5", "compacter_shared_rule")
    rules = {id(m.rule) for m in model.modules() if isinstance(m, PHMLinear)}
    assert len(rules) == 1


def test_phm_linear_is_a_kronecker_sum():
    layer = PHMLinear(4, 6, n=2)
    expected = sum(torch.kron(layer.rule[i], layer.w[i]) for i in range(2))
    torch.testing.assert_close(layer.weight(), expected)
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer(x), x @ expected + layer.bias)


def test_lora_starts_as_the_identity_update_and_covers_q_and_v(dirs):
    _, model, tok = make(dirs, "t5", "lora")
    names = {
        n.rsplit(".vl_lora", 1)[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".vl_lora." in n
    }
    assert names == {"q", "v"}  # T5 too (the original silently trained nothing on T5)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if hasattr(m, "vl_lora"):
            m.vl_lora = None
    enc, labels, feats, boxes = batch(tok)
    model.eval()
    plain.eval()
    a = model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa").logits
    b = plain(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa").logits
    assert torch.equal(a, b)  # B = 0 at initialisation


def test_encoder_prompts_extend_the_encoder_input(dirs):
    _, model, tok = make(dirs, "bart", "prompts")
    enc, labels, feats, boxes = batch(tok)
    out = model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa")
    assert out.encoder_last_hidden_state.shape[1] == 3 + enc["input_ids"].shape[1] + 4


def test_visual_adapters_go_into_the_in_model_encoder_on_meta():
    settings = api.load_settings(
        task="vqa", backbone="facebook/bart-base", feature_type="raw_RN50", use_vis_adapter=True
    )
    model = api.build_model(settings, device="meta")
    assert any(".vis_adapters." in n for n, _ in model.visual_encoder.named_parameters())


# ----------------------------------------------------------------- LM-head adapter, track_z, visual adapters


def test_lm_head_adapter_adds_to_the_logits(dirs):
    settings, model, tok = make_with(
        dirs, "bart", use_lm_head_adapter=True, use_adapter=True, reduction_factor=4
    )
    head = model.lm.get_output_embeddings()
    assert head.vl_parallel.up_sampler.out_features == model.vocab_size
    enc, labels, feats, boxes = batch(tok)
    model.eval()
    with_adapter = model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa")
    h = head.vl_parallel
    head.vl_parallel = None
    without = model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa")
    head.vl_parallel = h
    assert not torch.equal(with_adapter.logits, without.logits)
    groups = api.count_parameters(model)["groups"]
    assert groups["LM-head adapter"]["trainable"] == groups["LM-head adapter"]["total"] > 0


def make_with(dirs, family, **method):
    settings = api.load_settings(
        task="multitask", tasks=TASKS, backbone=str(dirs[family]), feat_dim=FEAT, dropout=0.0, **method
    )
    torch.manual_seed(0)
    return settings, api.build_model(settings), api.build_tokenizer(settings)


@pytest.mark.parametrize(
    "method", [{"use_adapter": True}, {"use_hyperformer": True, "unique_hyper_net": True}]
)
def test_track_z_adds_the_activation_penalty(dirs, method):
    common = {"reduction_factor": 4, **method}
    _, plain, tok = make_with(dirs, "t5", **common)
    _, tracked, _ = make_with(dirs, "t5", track_z=True, lambda_z=0.5, **common)
    enc, labels, feats, boxes = batch(tok)
    plain.eval()
    tracked.eval()
    a = plain(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa").loss
    b = tracked(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa").loss
    assert b > a  # same weights (same seed), plus 0.5 · mean(z²) > 0


def test_visual_adapters_in_every_clip_resnet_block():
    from open_clip.modified_resnet import ModifiedResNet

    from vlcli.peft.visual_adapters import VisualAdapter, inject_visual_adapters

    torch.manual_seed(0)
    resnet = ModifiedResNet(layers=(1, 2, 1, 1), output_dim=16, heads=2, image_size=64, width=8).eval()
    x = torch.randn(2, 3, 64, 64)
    before = resnet(x)
    keys = set(resnet.state_dict())
    assert inject_visual_adapters(resnet, "front-middle-back-transition-bottleneck", 2, remove_bn=True) == 5
    assert keys <= set(resnet.state_dict())  # the ResNet's own keys are kept
    adapters = [m for m in resnet.modules() if isinstance(m, VisualAdapter)]
    assert len(adapters) == 5 * 4
    # every block of every stage gets the same BN setting (the original gave BN to later blocks anyway)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for a in adapters for m in a.modules())
    after = resnet(x)
    assert after.shape == before.shape and not torch.equal(after, before)
    after.sum().backward()
    assert all(p.grad is not None for a in adapters for p in a.parameters())
    with pytest.raises(ValueError, match="vis_adapter_type"):
        inject_visual_adapters(resnet, "side-bottleneck", 2, remove_bn=False)


# ------------------------------------------------------------------------------------ decoder prompts


def test_bart_decoder_prompts_are_a_prefix_of_the_decoder(dirs):
    _, model, tok = make_with(dirs, "bart", decoder_prompt_len=3, mid_dim=8)
    model.eval()
    perturb(model)
    enc_in, labels, feats, boxes = batch(tok)
    out = model(enc_in["input_ids"], enc_in["attention_mask"], feats, boxes, labels=labels, task="gqa")
    # reference: the decoder run on [prompt; target embeddings] in one pass, logits of the target part
    with torch.no_grad():
        enc = model.encode(enc_in["input_ids"], enc_in["attention_mask"], feats, boxes)
        with model.router.scope("gqa"):
            prompt = model.peft["decoder_prompts"](2)
        decoder = model.lm.get_decoder()
        dec_ids = model.lm.prepare_decoder_input_ids_from_labels(labels=labels)
        hidden = decoder(
            inputs_embeds=torch.cat([prompt, decoder.embed_tokens(dec_ids)], 1),
            encoder_hidden_states=enc.outputs.last_hidden_state,
            encoder_attention_mask=enc.attention_mask,
        ).last_hidden_state[:, 3:]
        reference = model.lm.lm_head(hidden) + model.lm.final_logits_bias
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("peft.decoder_prompts.prompts.gqa.") for n in grads)
    assert not any(n.startswith("peft.decoder_prompts.prompts.vqa.") for n in grads)


def test_bart_decoder_prompts_generate_like_step_by_step_greedy(dirs):
    _, model, tok = make_with(dirs, "bart", decoder_prompt_len=2, mid_dim=8, use_single_prompt=True)
    model.eval()
    perturb(model)
    enc_in, _, feats, boxes = batch(tok)
    # min_length keeps EOS out, so the whole length is compared whatever the random model prefers
    plain = {"forced_bos_token_id": None, "forced_eos_token_id": None, "no_repeat_ngram_size": 0, "min_length": 5}
    ids = model.generate(
        enc_in["input_ids"], enc_in["attention_mask"], feats, boxes, num_beams=1, max_length=5, **plain
    )
    assert ids.shape == (2, 5) and torch.all(ids[:, 0] == model.config.decoder_start_token_id)
    current = ids[:, :1]
    for _ in range(4):
        logits = model(
            enc_in["input_ids"], enc_in["attention_mask"], feats, boxes, decoder_input_ids=current
        ).logits[:, -1]
        logits[:, model.config.eos_token_id] = -float("inf")
        current = torch.cat([current, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(ids, current)
    beams = model.generate(
        enc_in["input_ids"], enc_in["attention_mask"], feats, boxes, num_beams=3, max_length=5
    )
    assert beams.shape[0] == 2 and beams.shape[1] <= 5


def test_decoder_prompt_round_trip(dirs, tmp_path):
    method = {"decoder_prompt_len": 2, "encoder_prompt_len": 2, "mid_dim": 8}
    settings, model, tok = make_with(dirs, "bart", **method)
    perturb(model)
    model.eval()
    enc_in, labels, feats, boxes = batch(tok)
    want = model(
        enc_in["input_ids"], enc_in["attention_mask"], feats, boxes, labels=labels, task="vqa"
    ).logits
    path = api.save_checkpoint(model, tmp_path / "LAST", settings=settings)
    _, fresh, _ = make_with(dirs, "bart", **method)
    fresh.eval()
    assert api.load_checkpoint(fresh, path, settings=settings).complete
    got = fresh(enc_in["input_ids"], enc_in["attention_mask"], feats, boxes, labels=labels, task="vqa").logits
    assert torch.equal(got, want)


def test_methods_combine_on_one_model(dirs, tmp_path):
    """Adapters + LoRA + encoder prompts + the LM-head adapter together (rule R11 allows it)."""
    method = {
        "use_adapter": True,
        "reduction_factor": 4,
        "use_lora": True,
        "lora_dim": 2,
        "encoder_prompt_len": 2,
        "mid_dim": 8,
        "use_lm_head_adapter": True,
    }
    settings, model, tok = make_with(dirs, "bart", **method)
    groups = api.count_parameters(model)["groups"]
    assert {"adapters", "LoRA", "prompts", "LM-head adapter"} <= set(groups)
    perturb(model)
    enc, labels, feats, boxes = batch(tok)
    model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="vqa").loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in (".vl_adapter.", ".vl_lora.", "peft.encoder_prompts.", ".vl_parallel."):
        assert any(part in n for n in got), part
    model.eval()
    want = model(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="gqa").logits
    path = api.save_checkpoint(model, tmp_path / "BEST", settings=settings)
    _, fresh, _ = make_with(dirs, "bart", **method)
    fresh.eval()
    assert api.load_checkpoint(fresh, path, settings=settings).complete
    assert torch.equal(
        fresh(enc["input_ids"], enc["attention_mask"], feats, boxes, labels=labels, task="gqa").logits, want
    )
