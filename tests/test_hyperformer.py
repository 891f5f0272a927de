"""Hyperformer (spec §3.5): structure, parameter counts, routing by task, gradients, deepcopy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vlcli.model.presets import architecture_config, model_class, tiny_config
from vlcli.model.vl import TaskRouter
from vlcli.peft.hyperformer import (
    HyperAdapter,
    HyperNet,
    TaskEmbeddings,
    WeightGenerators,
    build_hyperformer,
)
from vlcli.peft.slots import PeftLinear

TASKS = ["vqa", "gqa", "nlvr", "caption"]
VOCAB = 300


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(family: str, **kwargs: object) -> tuple[nn.Module, nn.ModuleDict, TaskRouter]:
    """A tiny random LM with Hyperformer adapters (d 32, m 8, p 8) registered as ``lm.hyperformer``."""
    torch.manual_seed(0)
    lm = model_class(family)(tiny_config(family, VOCAB))
    router = TaskRouter()
    options = {"d_model": 32, "reduction_factor": 4, "projected_task_embedding_dim": 8, **kwargs}
    modules = build_hyperformer(lm, family, TASKS, router, **options)
    lm.hyperformer = modules
    return lm, modules, router


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(3, VOCAB, (2, 7), generator=g),
        "labels": torch.randint(3, VOCAB, (2, 5), generator=g),
    }


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_gradients_reach_only_the_active_task_row(family: str) -> None:
    """Training with router.task = "vqa" updates the vqa task embedding and leaves the gqa row untouched."""
    lm, modules, router = _tiny(family, cross_attention=True)
    router.task = "vqa"
    lm(**_batch()).loss.backward()
    grad = modules["task_embeddings"].weight.grad
    assert grad is not None
    assert grad[TASKS.index("vqa")].abs().sum() > 0
    assert torch.all(grad[TASKS.index("gqa")] == 0)
    hyper_grads = [p.grad for p in modules["encoder"].parameters()] + [
        p.grad for p in modules["decoder"].parameters()
    ]
    assert all(g is not None for g in hyper_grads)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_output_depends_on_task(family: str) -> None:
    lm, _, router = _tiny(family)
    lm.eval()
    batch = _batch()
    with torch.no_grad():
        with router.scope("vqa"):
            vqa = lm(**batch).logits
        with router.scope("gqa"):
            gqa = lm(**batch).logits
        with router.scope("vqa"):
            again = lm(**batch).logits
    assert not torch.allclose(vqa, gqa)
    assert torch.equal(vqa, again)


def test_unknown_task_is_a_clear_error() -> None:
    lm, _, router = _tiny("t5")
    router.task = "refcoco"
    with pytest.raises(ValueError, match="refcoco"):
        lm(**_batch())
    router.task = None
    with pytest.raises(ValueError, match="None"):
        lm(**_batch())


def test_adapters_are_parameter_free_and_attached_to_every_slot() -> None:
    """Only the registered ModuleDict holds parameters; backbone keys are unchanged."""
    plain = model_class("bart")(tiny_config("bart", VOCAB))
    plain_keys = set(plain.state_dict())
    lm, modules, _ = _tiny("bart", cross_attention=True)
    adapters = [m for m in lm.modules() if isinstance(m, HyperAdapter)]
    assert len(adapters) == 2 * 2 + 2 * 3  # encoder: self + ffn, decoder: self + cross + ffn, 2 layers each
    assert all(_numel(a) == 0 and not list(a.buffers()) for a in adapters)
    assert all(
        isinstance(m, PeftLinear)
        for m in lm.modules()
        if isinstance(getattr(m, "vl_adapter", None), HyperAdapter)
    )
    new_keys = set(lm.state_dict()) - plain_keys
    assert all(k.startswith("hyperformer.") for k in new_keys)
    assert plain_keys <= set(lm.state_dict())
    assert _numel(lm) - _numel(plain) == _numel(modules)
    for module in (modules["task_embeddings"], modules["encoder"], modules["decoder"], adapters[0]):
        assert type(module).parameter_group == "hyper-network"


def test_efficient_mode_has_block_embedding_and_fewer_generators() -> None:
    lm_u, unique, router_u = _tiny("t5", cross_attention=True)
    lm_e, eff, router_e = _tiny("t5", cross_attention=True, efficient=True)
    for stack, n_blocks in (("encoder", 2), ("decoder", 3)):
        u, e = unique[stack], eff[stack]
        assert u.block_embeddings is None
        assert isinstance(e.block_embeddings, nn.Embedding) and e.block_embeddings.weight.shape == (3, 512)
        assert u.projector[0].in_features == 1024 and e.projector[0].in_features == 1536
        gens_u = [m for m in u.modules() if isinstance(m, WeightGenerators)]
        gens_e = [m for m in e.modules() if isinstance(m, WeightGenerators)]
        assert len(gens_u) == n_blocks and len(gens_e) == 1
        assert sum(map(_numel, gens_e)) * n_blocks == sum(map(_numel, gens_u))
    router_e.task = "nlvr"
    lm_e(**_batch()).loss.backward()
    assert eff["encoder"].block_embeddings.weight.grad is not None


def test_adapter_layer_norm_generators() -> None:
    """ln_before / ln_after add LN weight + bias generators Linear(p, d) per block type; forward still works."""
    _, plain, _ = _tiny("bart")
    lm, modules, router = _tiny("bart", ln_before=True, ln_after=True)
    p, d = 8, 32
    per_generator = p * d + d
    for stack, n_blocks in (("encoder", 2), ("decoder", 3)):
        assert _numel(modules[stack]) - _numel(plain[stack]) == n_blocks * 4 * per_generator
    router.task = "caption"
    lm(**_batch()).loss.backward()
    assert modules["decoder"].generators["feed_forward"].post_ln_bias.weight.grad is not None


def test_deepcopy_keeps_references_consistent() -> None:
    lm, modules, router = _tiny("t5")
    lm.eval()
    router.task = "gqa"
    clone = copy.deepcopy(lm)
    adapter = clone.encoder.block[0].layer[0].SelfAttention.o.vl_adapter
    hypernet, task_embeddings, clone_router = adapter.shared
    assert (
        hypernet is clone.hyperformer["encoder"] and task_embeddings is clone.hyperformer["task_embeddings"]
    )
    assert hypernet is not modules["encoder"] and clone_router is not router and clone_router.task == "gqa"
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(clone(**batch).logits, lm(**batch).logits)


def test_bart_base_parameter_counts() -> None:
    """The spec's oracle for BART-base (d 768, 6+6 layers, m 96, p 8, unique_hyper_net, 4 tasks, no LNs)."""
    with torch.device("meta"):
        lm = model_class("bart")(architecture_config("facebook/bart-base"))
        modules = build_hyperformer(
            lm, "bart", TASKS, TaskRouter(), d_model=768, reduction_factor=8, projected_task_embedding_dim=8
        )
    assert modules["encoder"].bottleneck == 96 and modules["encoder"].n_layers == 6
    assert _numel(modules["task_embeddings"]) == 2_048
    assert _numel(modules["encoder"]) == 2_805_080
    assert _numel(modules["decoder"]) == 4_139_960
    assert _numel(modules) == 6_947_088


def test_bart_base_efficient_parameter_counts() -> None:
    """Efficient mode (derived, not from the oracle): 6·512 + 3·512 + (1536·128+128) + (128·8+8) + 16 + one set."""
    with torch.device("meta"):
        lm = model_class("bart")(architecture_config("facebook/bart-base"))
        modules = build_hyperformer(
            lm,
            "bart",
            TASKS,
            TaskRouter(),
            d_model=768,
            reduction_factor=8,
            projected_task_embedding_dim=8,
            efficient=True,
        )
    one_set = 2 * (8 * 73_728 + 73_728) + (8 * 96 + 96) + (8 * 768 + 768)
    expected = 6 * 512 + 3 * 512 + (1536 * 128 + 128) + (128 * 8 + 8) + 16 + one_set
    assert expected == 1_537_272
    assert _numel(modules["encoder"]) == _numel(modules["decoder"]) == expected


def test_projected_dim_default_and_init() -> None:
    net = HyperNet(3, 16, 4, -1, ("feed_forward",))
    assert net.projected_dim == 64 and net.projector[-1].normalized_shape == (64,)
    assert net.projector[-1].eps == 1e-6
    assert torch.all(net.projector[0].bias == 0) and torch.all(
        net.generators["feed_forward"].up_bias.bias == 0
    )
    assert torch.all(net.projector[-1].weight == 1)
    assert net.layer_embeddings.weight.std() < 0.1
    emb = TaskEmbeddings(TASKS)
    assert emb.weight.shape == (4, 512) and 0.8 < emb.weight.std() < 1.2
    with pytest.raises(ValueError, match="duplicate"):
        TaskEmbeddings(["vqa", "vqa"])
