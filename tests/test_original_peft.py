"""Original VL-Adapter checkpoints (``.pth`` state dicts of github.com/ylsung/VL_adapter) load into vlcli
models for every PEFT method and reproduce the output.

Each case builds a vlcli model, perturbs its trainable parameters, renames its ``state_dict`` to the names
the original code saves (:func:`to_original_state`, written from the original modules, independently of
:mod:`vlcli.model.original`), adds the DDP ``module.`` prefix, saves a ``.pth`` and loads it into a fresh
model with :func:`vlcli.api.load_checkpoint`: the load must be complete and the logits identical.
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.errors import NotImplementedYetError
from vlcli.model.checkpoint import load_checkpoint as load_with_map
from vlcli.model.original import original_key_map, original_state_transform

TASKS = ("vqa", "gqa")

# vlcli Linear carrying the adapter -> the original's controller (T5 and BART).
_T5_SLOTS = (
    (r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.o", r"\1.block.\2.layer.0.attn_adapter"),
    (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.o", r"decoder.block.\1.layer.1.enc_attn_adapter"),
    (
        r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.DenseReluDense\.wo",
        r"\1.block.\2.layer.\3.ff_adapter",
    ),
)
_BART_SLOTS = (
    (r"model\.encoder\.layers\.(\d+)\.self_attn\.out_proj", r"model.encoder.layers.\1.attn_adapter"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.out_proj", r"model.decoder.layers.\1.self_attn_adapter"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.out_proj", r"model.decoder.layers.\1.enc_attn_adapter"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.fc2", r"model.\1.layers.\2.ff_adapter"),
)
# Parameters of the original PHMLinear / LowRankLinear (nn.Linear keeps weight / bias).
_FACTOR_NAMES = {"rule": "phm_rule", "w": "W", "w_left": "W_left", "w_right": "W_right", "bias": "b"}
_PROMPT_PARTS = {"embedding": "0", "mlp.0": "1", "mlp.2": "3"}


def _tasks(task: str) -> tuple[str, ...]:
    return TASKS if task == "shared" else (task,)  # single mode: one module under every task key


def _controller(path: str, family: str) -> str:
    for pattern, repl in _T5_SLOTS if family == "t5" else _BART_SLOTS:
        if re.fullmatch(pattern, path):
            return re.sub(pattern, repl, path)
    raise AssertionError(f"no original adapter controller for {path}")


def _hypernet(rest: str) -> str:
    fixed = {
        "layer_embeddings.weight": "layer_id_embeddings.weight",
        "block_embeddings.weight": "adapters_block_type.weight",
        "projector.0.weight": "task_hypernet.task_embeding_generator.0.weight",
        "projector.0.bias": "task_hypernet.task_embeding_generator.0.bias",
        "projector.2.weight": "task_hypernet.task_embeding_generator.2.weight",
        "projector.2.bias": "task_hypernet.task_embeding_generator.2.bias",
        "projector.3.weight": "LayerNorm.weight",
        "projector.3.bias": "LayerNorm.bias",
    }
    if rest in fixed:
        return fixed[rest]
    block, gen, param = re.fullmatch(r"generators\.(\w+)\.(\w+)\.(weight|bias)", rest).groups()
    block = "" if block == "shared" else block + "_"
    side, what = gen.rsplit("_", 1)
    if side in ("up", "down"):
        return f"{block}{side}_sampler_hyper_net.{what}_generator.0.{param}"
    return f"{block}{side.removesuffix('_ln')}_layernorm_hypernet.{what}_generator.{param}"


def to_original_state(state: dict[str, torch.Tensor], family: str, kind: str) -> dict[str, torch.Tensor]:
    """vlcli names -> the names VL-Adapter's ``model.state_dict()`` has, duplicates included, under ``module.``."""
    stack = "" if family == "t5" else "model."
    vis = stack + "encoder.visual_embedding."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        names: list[str] = []
        if key.startswith("visual_embedding."):
            names = [vis + key[len("visual_embedding.") :]]
        elif ".vl_adapter." in key:
            path, rest = key[len("lm.") :].split(".vl_adapter.")
            ctrl = _controller(path, family)
            m = re.fullmatch(r"adapters\.(\w+)\.(down_sampler|up_sampler)\.(\w+)", rest)
            if m is None:
                names = [f"{ctrl}.{rest}"]  # pre_layer_norm / post_layer_norm
            else:
                task, sampler, param = m.groups()
                param = param if kind == "adapter" else _FACTOR_NAMES[param]
                names = [f"{ctrl}.adapters.{t}.{sampler}.{param}" for t in _tasks(task)]
        elif ".vl_lora." in key:
            linear, task, which = re.fullmatch(r"lm\.(.+)\.vl_lora\.pairs\.(\w+)\.lora_(A|B)", key).groups()
            names = [f"{linear}.lora_{which}s.{t}" for t in _tasks(task)]
        elif key.startswith("lm.lm_head.vl_parallel."):
            rest = key[len("lm.lm_head.vl_parallel.") :]
            names = ["output_adapter." + (rest if "layer_norm" in rest else "adapter." + rest)]
        elif key.startswith("lm."):
            names = [key[len("lm.") :]]
        elif key == "peft.phm_rule.rule":
            names = ["phm_rule"]
        elif key.startswith("peft.encoder_prompts.prompts."):
            rest = key[len("peft.encoder_prompts.prompts.") :]
            task, part, param = re.fullmatch(r"(\w+)\.(embedding|mlp\.0|mlp\.2)\.(\w+)", rest).groups()
            names = [
                f"{stack}encoder.prompt_modules.prompts.{t}.prefix_embedding.{_PROMPT_PARTS[part]}.{param}"
                for t in _tasks(task)
            ]
        elif key == "peft.hyperformer.task_embeddings.weight":
            for i, task in enumerate(TASKS):
                for owner in ("shared_task_embed", "encoder.task_embed", "decoder.task_embed"):
                    out[f"{stack}{owner}.task_to_embeddings.{task}"] = value[i].clone()
            continue
        elif key.startswith("peft.hyperformer."):
            which, rest = key[len("peft.hyperformer.") :].split(".", 1)
            names = [f"{stack}{which}.adapter_layers_hyper_net.{_hypernet(rest)}"]
        else:
            raise AssertionError(f"no original name for {key}")
        for name in names:
            out[name] = value.clone()
    out[vis + "obj_order_embedding.weight"] = out[stack + "shared.weight"]  # the original's tied copy
    if any(".adapter_layers_hyper_net.feed_forward_pre_layernorm" in k for k in out):
        # The unique hyper-net builds cross-attention layer-norm generators in the encoder too (never used).
        d = out[f"{stack}encoder.adapter_layers_hyper_net.LayerNorm.weight"].shape[0]
        width = state["lm.lm_head.weight"].shape[1]
        for part in ("weight", "bias"):
            for param, shape in (("weight", (width, d)), ("bias", (width,))):
                out[
                    f"{stack}encoder.adapter_layers_hyper_net.cross_attention_pre_layernorm_hypernet."
                    f"{part}_generator.{param}"
                ] = torch.randn(shape)
    return {"module." + k: v for k, v in out.items()}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("original_peft")
    return {family: make_backbone_dir(root / family, family) for family in ("t5", "bart")}


def _build(backbones, family: str, options: dict):
    settings = api.load_settings(
        task="multitask", tasks=",".join(TASKS), backbone=str(backbones[family]), feat_dim=16, **options
    )
    return api.build_model(settings).eval()


def _logits(model):
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 40, (2, 6), generator=g)
    feats, boxes = torch.randn(2, 4, 16, generator=g), torch.rand(2, 4, 4, generator=g)
    labels = torch.randint(5, 40, (2, 3), generator=g)
    with torch.no_grad():
        return model(input_ids, torch.ones_like(input_ids), feats, boxes, labels=labels, task="vqa").logits


def _source_and_pth(backbones, family, options, tmp_path):
    try:
        torch.manual_seed(1)
        source = _build(backbones, family, options)
    except NotImplementedYetError as exc:
        pytest.skip(str(exc))
    with torch.no_grad():
        for p in source.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    kind = (
        "compacter"
        if options.get("use_compacter")
        else "lradapter"
        if options.get("use_lradapter")
        else "adapter"
    )
    path = tmp_path / "Epoch20.pth"
    torch.save(to_original_state(source.state_dict(), family, kind), path)
    torch.manual_seed(2)
    return source, _build(backbones, family, options), path


CASES = {
    "adapter-multiple-ln-cross": (
        "t5",
        dict(
            use_adapter=True,
            reduction_factor=4,
            add_adapter_cross_attn=True,
            add_layer_norm_before_adapter=True,
            add_layer_norm_after_adapter=True,
        ),
    ),
    "adapter-single": (
        "bart",
        dict(use_adapter=True, reduction_factor=4, use_single_adapter=True, add_adapter_cross_attn=True),
    ),
    "adapter-half-shared": ("t5", dict(use_adapter=True, reduction_factor=4, share_up_sampler=True)),
    "compacter-shared-rule": (
        "bart",
        dict(
            use_compacter=True,
            reduction_factor=4,
            hypercomplex_division=4,
            shared_phm_rule=True,
            factorized_phm=True,
        ),
    ),
    "compacter-rule-over-tasks": (
        "t5",
        dict(
            use_compacter=True,
            reduction_factor=4,
            hypercomplex_division=2,
            shared_phm_rule=False,
            factorized_phm=False,
            shared_phm_rule_over_tasks=True,
            add_layer_norm_after_adapter=True,
        ),
    ),
    "compacter-single": (
        "t5",
        dict(
            use_compacter=True,
            reduction_factor=4,
            hypercomplex_division=4,
            use_single_adapter=True,
            shared_phm_rule=False,
        ),
    ),
    "lradapter": ("bart", dict(use_lradapter=True, reduction_factor=4, low_rank_rank=2)),
    "lora": ("bart", dict(use_lora=True, lora_dim=2)),
    "lora-single-t5": ("t5", dict(use_lora=True, lora_dim=2, use_single_lora=True)),
    "prompt": ("t5", dict(encoder_prompt_len=3, mid_dim=8)),
    "prompt-single": ("bart", dict(encoder_prompt_len=3, mid_dim=8, use_single_prompt=True)),
    "lm-head-adapter": (
        "bart",
        dict(
            use_adapter=True, reduction_factor=4, use_lm_head_adapter=True, add_layer_norm_before_adapter=True
        ),
    ),
}
HYPER_CASES = {
    "hyperformer-unique": (
        "t5",
        dict(
            use_hyperformer=True,
            unique_hyper_net=True,
            reduction_factor=4,
            add_layer_norm_before_adapter=True,
        ),
    ),
    "hyperformer-efficient": (
        "bart",
        dict(
            use_hyperformer=True,
            efficient_unique_hyper_net=True,
            reduction_factor=4,
            add_adapter_cross_attn=True,
            add_layer_norm_after_adapter=True,
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_original_peft_checkpoint_loads(backbones, case, tmp_path):
    family, options = CASES[case]
    source, target, path = _source_and_pth(backbones, family, options, tmp_path)
    report = api.load_checkpoint(target, path)
    assert report.complete, (report.missing, report.unexpected, report.skipped_shape)
    assert report.kind == "full"
    assert torch.equal(_logits(target), _logits(source))


@pytest.mark.parametrize("case", list(HYPER_CASES))
def test_original_hyperformer_maps_with_the_state_transform(backbones, case, tmp_path):
    """Key map + :func:`original_state_transform` (the per-task embeddings become one table's rows)."""
    family, options = HYPER_CASES[case]
    source, target, path = _source_and_pth(backbones, family, options, tmp_path)
    key_map, transform = original_key_map(target), original_state_transform(target)
    state = torch.load(path, weights_only=True)
    renamed = {}
    for key, value in state.items():
        new = key_map(key.removeprefix("module."))
        if new is not None:
            assert new not in renamed, new
            renamed[new] = value
    renamed = transform(renamed)
    model_state = target.state_dict()
    assert set(renamed) <= set(model_state), sorted(set(renamed) - set(model_state))
    assert set(model_state) <= set(renamed), sorted(set(model_state) - set(renamed))
    target.load_state_dict(renamed)
    assert torch.equal(_logits(target), _logits(source))

    # Without the transform the loader reports the parts as unexpected and the table as missing.
    report = load_with_map(target, path, allow_partial=True, key_map=original_key_map(target))
    assert "peft.hyperformer.task_embeddings.weight" in report.missing
    assert "peft.hyperformer.task_embeddings.weight[vqa]" in report.unexpected


@pytest.mark.parametrize("case", list(HYPER_CASES))
def test_original_hyperformer_checkpoint_loads_through_the_api(backbones, case, tmp_path):
    family, options = HYPER_CASES[case]
    source, target, path = _source_and_pth(backbones, family, options, tmp_path)
    report = api.load_checkpoint(target, path)
    assert report.complete
    assert torch.equal(_logits(target), _logits(source))


def test_single_mode_keeps_the_first_tasks_copy(backbones):
    model = _build(backbones, "bart", dict(use_adapter=True, reduction_factor=4, use_single_adapter=True))
    key_map = original_key_map(model)
    first = "model.encoder.layers.0.ff_adapter.adapters.gqa.up_sampler.weight"
    want = "lm.model.encoder.layers.0.fc2.vl_adapter.adapters.shared.up_sampler.weight"
    assert key_map(first) == want
    assert key_map(first) == want  # asking again for the same key gives the same answer
    assert key_map(first.replace("gqa", "vqa")) is None
