"""VL-T5 / VL-BART model core: joint encoder semantics, visual options, generation, checkpoints, API."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers.models.bart.modeling_bart import BartLearnedPositionalEmbedding
from transformers.models.t5.modeling_t5 import T5Attention

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.errors import ConfigError
from vlcli.model.checkpoint import CheckpointError
from vlcli.model.presets import model_class
from vlcli.model.visual import VisualConfig, VisualInputError

FEAT = 16


@pytest.fixture(scope="module", params=["t5", "bart"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def backbone_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {fam: make_backbone_dir(root / fam, fam) for fam in ("t5", "bart")}


def settings_for(backbone_dirs, family, **overrides):
    values = {"backbone": str(backbone_dirs[family]), "feat_dim": FEAT, "dropout": 0.0, **overrides}
    return api.load_settings(task="vqa", **values)


def build(backbone_dirs, family, **overrides):
    torch.manual_seed(1)
    model = api.build_model(settings_for(backbone_dirs, family, **overrides))
    return model.eval()


def text_batch(model_tok, texts=("what color is the cube", "is there a ball")):
    return model_tok.batch_encode(list(texts))


@pytest.fixture(scope="module")
def tokenizers(backbone_dirs):
    return {fam: api.build_tokenizer(settings_for(backbone_dirs, fam)) for fam in ("t5", "bart")}


def visual_inputs(batch=2, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, tokens, FEAT, generator=g)
    boxes = torch.rand(batch, tokens, 4, generator=g)
    return feats, boxes


# ------------------------------------------------------------------------------ text-only equality


def test_without_visual_tokens_logits_equal_plain_hf(backbone_dirs, tokenizers, family):
    model = build(backbone_dirs, family)
    # The same weights in transformers' own classes: undo the class swaps of the encoder override.
    plain = copy.deepcopy(model.lm)
    encoder = plain.get_encoder()
    if family == "t5":
        encoder.block[0].layer[0].SelfAttention.__class__ = T5Attention
    else:
        encoder.embed_positions.__class__ = BartLearnedPositionalEmbedding
        encoder.layernorm_embedding.__class__ = torch.nn.LayerNorm
    tok = tokenizers[family]
    batch = text_batch(tok)
    labels = tok.batch_encode(["red", "yes"])["input_ids"]
    ours = model(batch["input_ids"], batch["attention_mask"], labels=labels)
    ref = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    assert torch.equal(ours.logits, ref.logits)
    assert ours.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    # a freshly built transformers model loaded with the state dict agrees to float rounding
    fresh = model_class(family)(copy.deepcopy(model.lm.config)).eval()
    fresh.load_state_dict(model.lm.state_dict())
    other = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    torch.testing.assert_close(ours.logits, other.logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- joint encoder (T5)


def test_t5_position_bias_is_text_only(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "t5")
    tok = tokenizers["t5"]
    batch = text_batch(tok)
    feats, boxes = visual_inputs(tokens=7)
    captured = {}
    layer = model.lm.get_encoder().block[0].layer[0]
    handle = layer.register_forward_hook(lambda m, i, o: captured.update(bias=o[1]))
    model.encode(batch["input_ids"], batch["attention_mask"], feats, boxes)
    handle.remove()
    bias = captured["bias"]
    text = batch["input_ids"].shape[1]
    assert bias.shape[-2:] == (text + 7, text + 7)
    assert torch.count_nonzero(bias[..., text:, :]) == 0
    assert torch.count_nonzero(bias[..., :, text:]) == 0
    attn = layer.SelfAttention
    hf_bias = super(type(attn), attn).compute_bias  # transformers' T5Attention.compute_bias
    assert torch.equal(bias[..., :text, :text], hf_bias(text, text))
    assert torch.count_nonzero(bias[..., :text, :text]) > 0
    # outside encode() the attention is transformers' own again
    assert torch.equal(attn.compute_bias(text + 7, text + 7), hf_bias(text + 7, text + 7))


def _extended(mask, dtype):
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def test_t5_joint_encoder_matches_vl_t5_reference(backbone_dirs, tokenizers):
    """VL-T5's JointEncoder: [text; visual], bias filled on the text block only, run block by block."""
    model = build(backbone_dirs, "t5")
    tok = tokenizers["t5"]
    batch = text_batch(tok)
    feats, boxes = visual_inputs(tokens=6)
    enc = model.encode(batch["input_ids"], batch["attention_mask"], feats, boxes)

    encoder = model.lm.get_encoder()
    text = encoder.embed_tokens(batch["input_ids"])
    vis = model.visual_embedding(feats, boxes, token_embedding=model.lm.get_input_embeddings())
    hidden = torch.cat([text, vis], 1)
    mask = torch.cat([batch["attention_mask"], torch.ones(2, 6, dtype=torch.long)], 1)
    length, text_len = hidden.shape[1], text.shape[1]
    attn = encoder.block[0].layer[0].SelfAttention
    block_bias = super(type(attn), attn).compute_bias(text_len, text_len)
    bias = block_bias.new_zeros(1, block_bias.shape[1], length, length)
    bias[:, :, :text_len, :text_len] = block_bias
    ext = _extended(mask, hidden.dtype)
    for blk in encoder.block:
        hidden = blk(hidden, ext, bias)[0]
    reference = encoder.final_layer_norm(hidden)
    torch.testing.assert_close(enc.outputs.last_hidden_state, reference, rtol=1e-5, atol=1e-5)
    # and plain inputs_embeds (relative bias across visual tokens too) would differ
    naive = encoder(inputs_embeds=torch.cat([text, vis], 1), attention_mask=mask).last_hidden_state
    assert (naive - reference).abs().max() > 1e-3


def test_bart_joint_encoder_matches_vl_bart_reference(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "bart")
    tok = tokenizers["bart"]
    batch = text_batch(tok)
    feats, boxes = visual_inputs(tokens=6)
    enc = model.encode(batch["input_ids"], batch["attention_mask"], feats, boxes)

    encoder = model.lm.get_encoder()
    ids = batch["input_ids"]
    text = encoder.embed_tokens(ids) + encoder.embed_positions.weight[2 : 2 + ids.shape[1]]
    text = torch.nn.functional.layer_norm(
        text,
        (text.shape[-1],),
        encoder.layernorm_embedding.weight,
        encoder.layernorm_embedding.bias,
        encoder.layernorm_embedding.eps,
    )
    vis = model.visual_embedding(feats, boxes, token_embedding=model.lm.get_input_embeddings())
    hidden = torch.cat([text, vis], 1)
    mask = torch.cat([batch["attention_mask"], torch.ones(2, 6, dtype=torch.long)], 1)
    ext = _extended(mask, hidden.dtype)
    for layer in encoder.layers:
        hidden = layer(hidden, ext)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    torch.testing.assert_close(enc.outputs.last_hidden_state, hidden, rtol=1e-5, atol=1e-5)


def test_bart_share_vis_lang_layer_norm_normalises_visual_tokens(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "bart", share_vis_lang_layer_norm=True)
    tok = tokenizers["bart"]
    batch = text_batch(tok)
    feats, boxes = visual_inputs(tokens=4)
    seen = {}
    norm = model.lm.get_encoder().layernorm_embedding
    handle = norm.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model.encode(batch["input_ids"], batch["attention_mask"], feats, boxes)
    handle.remove()
    out = seen["out"]
    text = batch["input_ids"].shape[1]
    vis = out[:, text:]
    # LayerNorm output with weight 1 / bias 0 (the tiny backbone's init) has mean 0 per token
    assert vis.shape[1] == 4
    torch.testing.assert_close(vis.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- visual options


VISUAL_CASES = [
    # (family, settings, feats shape, expected visual tokens in the encoder, train mode)
    ("t5", {}, (2, 5, FEAT), 5, False),
    ("t5", {"use_vis_layer_norm": False}, (2, 5, FEAT), 5, False),
    ("t5", {"individual_vis_layer_norm": False}, (2, 5, FEAT), 5, False),
    ("t5", {"use_vis_order_embedding": False}, (2, 5, FEAT), 5, False),
    ("t5", {"additional_visual_embedding_layers": 2}, (2, 5, FEAT), 5, False),
    ("t5", {"downsample": True, "n_boxes": 36}, (2, 49, FEAT), 36, False),
    ("t5", {"downsample": True, "n_boxes": 16}, (2, 2, 49, FEAT), 32, False),
    ("t5", {"oneddownsample": True, "n_boxes": 10}, (2, 49, FEAT), 10, False),
    ("t5", {"sparse_sample": True, "n_boxes": 8}, (2, 49, FEAT), 8, True),
    ("t5", {"sparse_sample": True, "n_boxes": 8}, (2, 49, FEAT), 49, False),
    ("t5", {}, (2, 2, 5, FEAT), 10, False),
    ("bart", {}, (2, 5, FEAT), 5, False),
    ("bart", {"individual_vis_layer_norm": False}, (2, 5, FEAT), 5, False),
    ("bart", {"vis_use_transformer": True}, (2, 5, FEAT), 5, False),
    ("bart", {"share_vis_lang_layer_norm": True}, (2, 5, FEAT), 5, False),
    (
        "bart",
        {
            "expand_vis_embedding": True,
            "n_image_tokens": 3,
            "vis_pooling_output": True,
            "feature_type": "RN50",
            "feat_dim": 1024,
        },
        (2, 1, 1024),
        3,
        False,
    ),
    ("bart", {"downsample": True, "n_boxes": 36}, (2, 2, 49, FEAT), 72, False),
    ("bart", {"sparse_sample": True, "n_boxes": 6}, (2, 2, 9, FEAT), 6, True),
]


@pytest.mark.parametrize(
    ("fam", "overrides", "shape", "tokens", "train"),
    VISUAL_CASES,
    ids=[
        f"{c[0]}-{','.join(c[1]) or 'default'}-{'x'.join(map(str, c[2]))}-{'train' if c[4] else 'eval'}"
        for c in VISUAL_CASES
    ],
)
def test_visual_option_shapes(backbone_dirs, tokenizers, fam, overrides, shape, tokens, train):
    model = build(backbone_dirs, fam, **overrides)
    model.train(train)
    tok = tokenizers[fam]
    batch = text_batch(tok)
    feats = torch.randn(*shape)
    boxes = torch.rand(*shape[:-1], 4)
    out = model(
        batch["input_ids"],
        batch["attention_mask"],
        feats,
        boxes,
        labels=tok.batch_encode(["red", "yes"])["input_ids"],
    )
    text = batch["input_ids"].shape[1]
    assert out.encoder_last_hidden_state.shape == (2, text + tokens, model.d_model)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.visual_embedding.parameters())


def test_visual_module_structure_follows_options(backbone_dirs):
    t5 = build(backbone_dirs, "t5", additional_visual_embedding_layers=2)
    kinds = [type(m).__name__ for m in t5.visual_embedding.feat_embedding]
    assert kinds == [
        "Linear",
        "T5LayerNorm",
        "Linear",
        "ReLU",
        "T5LayerNorm",
        "Linear",
        "ReLU",
        "T5LayerNorm",
    ]
    single = build(backbone_dirs, "bart", individual_vis_layer_norm=False)
    assert [type(m).__name__ for m in single.visual_embedding.feat_embedding] == ["Linear"]
    assert type(single.visual_embedding.layer_norm).__name__ == "LayerNorm"
    bert = build(backbone_dirs, "bart", vis_use_transformer=True)
    assert [type(m).__name__ for m in bert.visual_embedding.feat_embedding] == [
        "Linear",
        "_BertOnEmbeds",
        "LayerNorm",
    ]
    no_order = build(backbone_dirs, "t5", use_vis_order_embedding=False)
    assert not hasattr(no_order.visual_embedding, "img_order_embedding")


def test_object_order_embedding_is_the_vis_extra_id_rows(backbone_dirs, tokenizers, family):
    model = build(backbone_dirs, family)
    tok = tokenizers[family]
    feats, boxes = visual_inputs(batch=1, tokens=3)
    emb = model.lm.get_input_embeddings()
    before = model.visual_embedding(feats, boxes, token_embedding=emb)
    with torch.no_grad():
        emb.weight[tok.vis_token_id(1)] += 1.0
    after = model.visual_embedding(feats, boxes, token_embedding=emb)
    changed = (after - before).abs().amax(-1)[0]
    assert changed[1] > 0 and changed[0] == 0 and changed[2] == 0


def test_two_image_inputs_get_image_order_ids(backbone_dirs):
    model = build(backbone_dirs, "t5")
    feats = torch.randn(1, 2, 3, FEAT)
    boxes = torch.zeros(1, 2, 3, 4)
    emb = model.lm.get_input_embeddings()
    joint, _ = model.embed_visual(feats, boxes)
    flat = feats.reshape(1, 6, FEAT)
    expected = model.visual_embedding(
        flat, boxes.reshape(1, 6, 4), torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 2]), emb
    )
    torch.testing.assert_close(joint, expected)


def test_downsample_is_2x2_max_pooling_of_a_7x7_grid():
    from vlcli.model.visual import downsample

    grid = torch.arange(49, dtype=torch.float).reshape(1, 49, 1)
    pooled = downsample(grid, 36)
    # window rows/cols [i, i+2): the max is the bottom-right element (i+1)*7 + (j+1)
    expected = torch.tensor([(i + 1) * 7 + (j + 1) for i in range(6) for j in range(6)], dtype=torch.float)
    assert torch.equal(pooled[0, :, 0], expected)


def test_visual_input_errors_are_clear(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "t5", downsample=True)
    batch = text_batch(tokenizers["t5"])
    with pytest.raises(VisualInputError, match="square grid"):
        model.encode(
            batch["input_ids"], batch["attention_mask"], torch.randn(2, 10, FEAT), torch.zeros(2, 10, 4)
        )
    with pytest.raises(VisualInputError, match="feat_dim 16"):
        model.encode(
            batch["input_ids"], batch["attention_mask"], torch.randn(2, 49, 8), torch.zeros(2, 49, 4)
        )
    with pytest.raises(VisualInputError, match="boxes"):
        model.encode(
            batch["input_ids"], batch["attention_mask"], torch.randn(2, 49, FEAT), torch.zeros(2, 49, 5)
        )


def test_text_only_model_with_use_vision_false(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "bart", use_vision=False)
    assert not hasattr(model, "visual_embedding")
    batch = text_batch(tokenizers["bart"])
    with pytest.raises(VisualInputError, match="use_vision false"):
        model.encode(batch["input_ids"], batch["attention_mask"], *visual_inputs())


# ------------------------------------------------------------------------------------ generation


def test_generate_uses_explicit_beams_and_length_only(backbone_dirs, tokenizers, family):
    model = build(backbone_dirs, family)
    batch = text_batch(tokenizers[family])
    feats, boxes = visual_inputs()
    first = model.generate(
        batch["input_ids"], batch["attention_mask"], feats, boxes, num_beams=3, max_length=6
    )
    assert first.shape[0] == 2 and first.shape[1] <= 6
    assert torch.all(first[:, 0] == model.config.decoder_start_token_id)
    # the backbone's own generation settings are never consulted
    model.lm.generation_config.max_length = 2
    model.lm.generation_config.num_beams = 1
    model.lm.generation_config.bad_words_ids = [[int(first[0, 1])]]
    again = model.generate(
        batch["input_ids"], batch["attention_mask"], feats, boxes, num_beams=3, max_length=6
    )
    assert torch.equal(first, again)


def test_bart_generation_defaults_are_explicit(backbone_dirs):
    model = build(backbone_dirs, "bart")
    config = model.generation_config(num_beams=5, max_length=40)
    assert (config.num_beams, config.max_length, config.no_repeat_ngram_size, config.forced_bos_token_id) == (
        5,
        40,
        3,
        0,
    )
    assert model.generation_config(1, 20, no_repeat_ngram_size=0).no_repeat_ngram_size == 0


def test_score_candidates_reads_the_first_answer_position(backbone_dirs, tokenizers, family):
    model = build(backbone_dirs, family)
    tok = tokenizers[family]
    batch = text_batch(tok)
    feats, boxes = visual_inputs()
    cands = [tok.encode("yes")[0 if family == "t5" else 1], tok.vis_token_id(2)]
    scores = model.score_candidates(batch["input_ids"], cands, batch["attention_mask"], feats, boxes)
    prefix = [0] if family == "t5" else [2, 0]  # T5 step 0; BART step 1 after </s> <s>
    assert model.answer_prefix() == prefix
    dec = torch.tensor([prefix, prefix])
    logits = model(batch["input_ids"], batch["attention_mask"], feats, boxes, decoder_input_ids=dec).logits
    torch.testing.assert_close(scores, logits[:, -1, cands])


def test_loss_reductions(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "t5")
    tok = tokenizers["t5"]
    batch = text_batch(tok)
    labels = tok.batch_encode(["red cube left of a ball", "yes"])["input_ids"]
    labels[labels == tok.pad_token_id] = -100
    feats, boxes = visual_inputs()
    out = model(batch["input_ids"], batch["attention_mask"], feats, boxes, labels=labels)
    assert out.loss.item() == pytest.approx(out.example_loss.mean().item())
    weighted = model(
        batch["input_ids"],
        batch["attention_mask"],
        feats,
        boxes,
        labels=labels,
        loss_weights=torch.tensor([1.0, 0.0]),
    )
    assert weighted.loss.item() == pytest.approx(out.example_loss[0].item() / 2)
    token = model(
        batch["input_ids"], batch["attention_mask"], feats, boxes, labels=labels, loss_reduction="token"
    )
    assert token.loss.item() != pytest.approx(out.loss.item())
    counts = (labels != -100).sum(1).float()
    assert token.loss.item() == pytest.approx(
        (out.example_loss * counts).sum().item() / counts.sum().item(), rel=1e-5
    )


# ---------------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_is_exact(backbone_dirs, tokenizers, family, tmp_path):
    settings = settings_for(backbone_dirs, family)
    torch.manual_seed(3)
    model = api.build_model(settings).eval()
    with torch.no_grad():
        for p in model.visual_embedding.parameters():
            p.add_(torch.randn_like(p))
    batch = text_batch(tokenizers[family])
    feats, boxes = visual_inputs()
    dec = torch.tensor([model.answer_prefix()] * 2)
    expected = model(batch["input_ids"], batch["attention_mask"], feats, boxes, decoder_input_ids=dec).logits

    path = api.save_checkpoint(model, tmp_path / "BEST", settings=settings)
    manifest = json.loads((tmp_path / "BEST.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["family"] == family
    assert manifest["vocab_size"] == model.vocab_size and manifest["visual"]["feat_dim"] == FEAT
    assert all(k.startswith("visual_embedding.") for k in manifest["keys"])

    torch.manual_seed(4)
    fresh = api.build_model(settings).eval()
    report = api.load_checkpoint(fresh, path, settings=settings)
    assert report.complete
    got = fresh(batch["input_ids"], batch["attention_mask"], feats, boxes, decoder_input_ids=dec).logits
    assert torch.equal(got, expected)

    full = api.save_checkpoint(model, tmp_path / "FULL", full=True, settings=settings)
    torch.manual_seed(5)
    other = api.build_model(settings).eval()
    with torch.no_grad():
        for p in other.lm.parameters():
            p.mul_(0.5)
    assert api.load_checkpoint(other, full).kind == "full"
    got = other(batch["input_ids"], batch["attention_mask"], feats, boxes, decoder_input_ids=dec).logits
    assert torch.equal(got, expected)


def test_strict_load_names_the_keys_and_partial_load_reports_them(backbone_dirs, tmp_path):
    settings = settings_for(backbone_dirs, "t5")
    model = api.build_model(settings)
    path = api.save_checkpoint(model, tmp_path / "LAST")
    bigger = api.build_model(settings_for(backbone_dirs, "t5", additional_visual_embedding_layers=1))
    with pytest.raises(CheckpointError) as err:
        api.load_checkpoint(bigger, path)
    text = str(err.value)
    assert "missing key" in text and "visual_embedding.feat_embedding.2.weight" in text
    assert (
        "visual_embedding.absolute_vis_pos_embedding.1.weight"
        not in text.split("missing (")[1].split("\n")[0]
    )
    report = api.load_checkpoint(bigger, path, allow_partial=True)
    assert "visual_embedding.feat_embedding.2.weight" in report.missing
    assert "visual_embedding.feat_embedding.0.weight" in report.loaded


def test_manifest_mismatch_is_a_clear_error(backbone_dirs, tmp_path):
    settings = settings_for(backbone_dirs, "bart")
    model = api.build_model(settings)
    path = api.save_checkpoint(model, tmp_path / "BEST", settings=settings)
    other_settings = settings_for(backbone_dirs, "bart", feat_dim=8)
    other = api.build_model(other_settings)
    with pytest.raises(CheckpointError, match=r"feat_dim: checkpoint 16, now 8"):
        api.load_checkpoint(other, path, settings=other_settings)
    lora = settings_for(backbone_dirs, "bart", use_lora=True)
    with pytest.raises(CheckpointError, match=r"method settings differ: use_lora False -> True"):
        api.load_checkpoint(api.build_model(settings), path, settings=lora)


def _original_names(state, family):
    """Rename a vlcli state dict to the original VL-T5 / VL-BART names, as the original code saved them."""
    vis_prefix = "encoder.visual_embedding." if family == "t5" else "model.encoder.visual_embedding."
    shared = "shared.weight" if family == "t5" else "model.shared.weight"
    out = {}
    for key, value in state.items():
        if key.startswith("visual_embedding."):
            out[vis_prefix + key[len("visual_embedding.") :]] = value
        else:
            out[key[len("lm.") :]] = value
    out[vis_prefix + "obj_order_embedding.weight"] = out[shared]  # the original's tied copy
    return {"module." + k: v.clone() for k, v in out.items()}  # saved under DDP


def test_original_state_dict_loads_and_reproduces_the_output(backbone_dirs, tokenizers, family, tmp_path):
    settings = settings_for(backbone_dirs, family)
    torch.manual_seed(6)
    source = api.build_model(settings).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    original = _original_names(source.state_dict(), family)
    assert any(
        k.startswith("module.encoder.visual_embedding.")
        or k.startswith("module.model.encoder.visual_embedding.")
        for k in original
    )
    torch.save(original, tmp_path / "Epoch30.pth")

    torch.manual_seed(7)
    target = api.build_model(settings).eval()
    report = api.load_checkpoint(target, tmp_path / "Epoch30.pth")
    assert report.kind == "full" and report.complete
    batch = text_batch(tokenizers[family])
    feats, boxes = visual_inputs()
    labels = tokenizers[family].batch_encode(["red", "yes"])["input_ids"]
    want = source(batch["input_ids"], batch["attention_mask"], feats, boxes, labels=labels)
    got = target(batch["input_ids"], batch["attention_mask"], feats, boxes, labels=labels)
    assert torch.equal(got.logits, want.logits)

    broken = {k: v for k, v in original.items() if "feat_embedding.0.weight" not in k}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="visual_embedding.feat_embedding.0.weight"):
        api.load_checkpoint(api.build_model(settings), tmp_path / "broken.pth")


# ------------------------------------------------------------------------------ counts and API


def test_meta_counts_equal_real_counts(backbone_dirs, family):
    settings = settings_for(
        backbone_dirs, family, unfreeze_layer_norms=True, additional_visual_embedding_layers=1
    )
    real = api.count_parameters(api.build_model(settings))
    meta_model = api.build_model(settings, device="meta")
    assert next(meta_model.parameters()).device.type == "meta"
    assert api.count_parameters(meta_model) == real
    assert 0 < real["trainable"] < real["total"]


@pytest.mark.parametrize(
    ("backbone", "backbone_total"), [("t5-base", 222_958_848), ("facebook/bart-base", 139_574_016)]
)
def test_inspect_config_counts_presets_offline(cli, backbone, backbone_total):
    res = cli("inspect-config", "vqa", "--backbone", backbone, "--unfreeze_language_model", "--json")
    assert res.code == 0, res.err
    params = json.loads(res.out)["parameters"]
    visual = params["groups"]["visual embedding"]["total"]
    language = sum(g["total"] for name, g in params["groups"].items() if name != "visual embedding")
    assert language == backbone_total  # resized to the VL vocabulary
    assert set(params["groups"]) == {"backbone", "layer norms", "token embedding / LM head", "visual embedding"}
    assert params["total"] == backbone_total + visual == params["trainable"]
    frozen = json.loads(cli("inspect-config", "vqa", "--backbone", backbone, "--json").out)["parameters"]
    assert frozen["trainable"] == visual and frozen["total"] == params["total"]


def test_inspect_config_table_and_unknown_backbone(cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = cli("inspect-config", "vqa", "--backbone", "t5-small")
    assert res.code == 0 and "Parameters" in res.out and "visual embedding" in res.out
    res = cli("inspect-config", "vqa", "--backbone", "someone/t5-unknown", "--json")
    assert res.code == 0
    assert "someone/t5-unknown" in json.loads(res.out)["parameters"]["unavailable"]


def test_unfreeze_flags_choose_the_trainable_set(backbone_dirs):
    def trainable(**overrides):
        model = api.build_model(settings_for(backbone_dirs, "t5", **overrides))
        return {n for n, p in model.named_parameters() if p.requires_grad}

    base = trainable()
    assert base and all(n.startswith("visual_embedding.") for n in base)
    norms = trainable(unfreeze_layer_norms=True) - base
    assert norms and all("layer_norm" in n for n in norms)  # T5's RMS norms count (spec §7.1)
    head = trainable(unfreeze_lm_head=True) - base
    assert "lm.shared.weight" in head


def test_build_applies_dropout_and_vocab(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "t5", dropout=0.3)
    assert model.config.dropout_rate == 0.3
    assert model.vocab_size == tokenizers["t5"].vocab_size == 300
    bart = build(backbone_dirs, "bart", dropout=0.2)
    assert (bart.config.dropout, bart.config.attention_dropout, bart.config.activation_dropout) == (
        0.2,
        0.2,
        0.2,
    )
    assert bart.lm.final_logits_bias.shape[-1] == bart.vocab_size == tokenizers["bart"].vocab_size


def test_load_settings_validates_like_the_cli():
    with pytest.raises(ConfigError) as err:
        api.load_settings(task="vqa", downsample=True, oneddownsample=True)
    assert "R19" in str(err.value)
    assert api.load_settings(["single_adapter"], task="vqa").get("reduction_factor") == 8


def test_deepcopy_keeps_the_encoder_override(backbone_dirs, tokenizers):
    model = build(backbone_dirs, "t5")
    twin = copy.deepcopy(model)
    batch = text_batch(tokenizers["t5"])
    feats, boxes = visual_inputs()
    a = model.encode(batch["input_ids"], batch["attention_mask"], feats, boxes).outputs.last_hidden_state
    b = twin.encode(batch["input_ids"], batch["attention_mask"], feats, boxes).outputs.last_hidden_state
    assert torch.equal(a, b)


def test_visual_config_rejects_bad_values():
    with pytest.raises(VisualInputError, match="pos_dim"):
        VisualConfig(pos_dim=5)
    with pytest.raises(VisualInputError, match="reduction"):
        VisualConfig(reduction="pool")
