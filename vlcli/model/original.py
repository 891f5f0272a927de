"""Key map from original VL-T5 / VL-BART / VL-Adapter ``state_dict`` names to vlcli's.

The original models subclass transformers' T5 / BART classes, so their keys are the backbone's keys
(``shared.weight``, ``encoder.block.0...`` for T5; ``model.encoder.layers.0...`` for BART) plus the
visual embedding inside the encoder (``encoder.visual_embedding.*`` / ``model.encoder.visual_embedding.*``).
vlcli composes instead: the backbone lives under ``lm.`` and the visual embedding under
``visual_embedding.``. The original also stores the tied object-order embedding a second time
(``...visual_embedding.obj_order_embedding.weight`` = the token embedding); that copy is dropped,
except with ``expand_vis_embedding`` where it is a table of its own. A leading ``module.`` (DDP) is
stripped before the map runs (:func:`vlcli.model.checkpoint.load_checkpoint`).

PEFT modules (VL-Adapter). ``B.`` is the original's stack prefix: ``""`` for T5, ``model.`` for BART;
``T`` a task name; ``S`` a sampler, ``down_sampler`` or ``up_sampler``.

* Adapter controllers sit beside the sublayer in the original and on the sublayer's output Linear in
  vlcli (``...vl_adapter.``):

  - T5 ``{encoder,decoder}.block.i.layer.0.attn_adapter.`` -> ``...layer.0.SelfAttention.o``;
    ``decoder.block.i.layer.1.enc_attn_adapter.`` -> ``...layer.1.EncDecAttention.o``;
    ``*.block.i.layer.j.ff_adapter.`` -> ``...layer.j.DenseReluDense.wo``.
  - BART ``model.encoder.layers.i.attn_adapter.`` and ``model.decoder.layers.i.self_attn_adapter.``
    -> ``...self_attn.out_proj``; ``model.decoder.layers.i.enc_attn_adapter.`` ->
    ``...encoder_attn.out_proj``; ``model.*.layers.i.ff_adapter.`` -> ``...fc2``.

  Inside a controller ``pre_layer_norm.*`` / ``post_layer_norm.*`` keep their names and
  ``adapters.T.S.P`` becomes ``adapters.T.S.P'`` with ``P'`` = ``weight`` / ``bias`` (adapter),
  ``phm_rule`` -> ``rule``, ``W`` -> ``w``, ``W_left`` -> ``w_left``, ``W_right`` -> ``w_right``,
  ``b`` -> ``bias`` (Compacter ``PHMLinear`` and low-rank ``LowRankLinear``; same layouts).
  The shared PHM rule (``shared_phm_rule``) is the top-level ``phm_rule`` -> ``peft.phm_rule.rule``;
  the original also registers it in every ``PHMLinear`` (``...S.phm_rule``), as vlcli does (``...S.rule``).
* LoRA: ``<attention>.{q_proj,v_proj}.lora_As.T`` / ``.lora_Bs.T`` -> ``<attention>.{q_proj,v_proj}
  .vl_lora.pairs.T.lora_A`` / ``.lora_B`` (the original has LoRA on BART only; T5 ``q`` / ``v`` are
  mapped the same way).
* Encoder prompts: ``B.encoder.prompt_modules.prompts.T.prefix_embedding.{0,1,3}.*`` ->
  ``peft.encoder_prompts.prompts.T.{embedding,mlp.0,mlp.2}.*``.
* LM-head adapter: ``output_adapter.adapter.S.*`` and ``output_adapter.{pre,post}_layer_norm.*`` ->
  ``lm.lm_head.vl_parallel.*``.
* Hyperformer: ``B.{encoder,decoder}.adapter_layers_hyper_net.`` -> ``peft.hyperformer.{encoder,decoder}.``
  with ``layer_id_embeddings`` -> ``layer_embeddings``, ``adapters_block_type`` -> ``block_embeddings``,
  ``task_hypernet.task_embeding_generator.{0,2}`` -> ``projector.{0,2}``, ``LayerNorm`` -> ``projector.3``,
  ``[K_]{up,down}_sampler_hyper_net.{weight,bias}_generator.0`` -> ``generators.K.{up,down}_{weight,bias}``
  and ``[K_]{pre,post}_layernorm_hypernet.{weight,bias}_generator`` -> ``generators.K.{pre,post}_ln_{weight,bias}``
  (``K`` the block type, ``shared`` in the efficient mode). The encoder's cross-attention layer-norm
  generators, which the original builds but never uses, are dropped. The per-task embeddings
  ``B.shared_task_embed.task_to_embeddings.T`` (512,) are rows of vlcli's one
  ``peft.hyperformer.task_embeddings.weight``: the map names each ``...weight[T]`` and
  :func:`original_state_transform` stacks them; the copies the original keeps under
  ``B.{encoder,decoder}.task_embed.`` are dropped.

Single mode (``use_single_adapter`` / ``use_single_lora`` / ``use_single_prompt``): the original registers
one module under every task key, so its state dict holds the same tensors once per task; vlcli keeps
them once under ``shared``. The first task's copy is mapped and the others are dropped. The function
:func:`original_key_map` returns remembers those choices: use one function per state dict.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

# Unused by T5 since transformers 4.x (cross-attention has no relative bias); old checkpoints may hold it.
_DROPPED = {"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"}
_UNUSED_BERT_PARTS = (
    "feat_embedding.1.bert_module.embeddings.word_embeddings.",
    "feat_embedding.1.bert_module.pooler.",
)
SHARED = "shared"  # vlcli's module key in single mode
TASK_EMBEDDINGS_KEY = "peft.hyperformer.task_embeddings.weight"

# Adapter controllers: original prefix -> the vlcli Linear they attach to (``{0}``, ``{1}``... = groups).
_T5_CONTROLLERS = (
    (
        re.compile(r"(encoder|decoder)\.block\.(\d+)\.layer\.0\.attn_adapter\."),
        "lm.{0}.block.{1}.layer.0.SelfAttention.o",
    ),
    (
        re.compile(r"decoder\.block\.(\d+)\.layer\.1\.enc_attn_adapter\."),
        "lm.decoder.block.{0}.layer.1.EncDecAttention.o",
    ),
    (
        re.compile(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.ff_adapter\."),
        "lm.{0}.block.{1}.layer.{2}.DenseReluDense.wo",
    ),
)
_BART_CONTROLLERS = (
    (
        re.compile(r"model\.encoder\.layers\.(\d+)\.attn_adapter\."),
        "lm.model.encoder.layers.{0}.self_attn.out_proj",
    ),
    (
        re.compile(r"model\.decoder\.layers\.(\d+)\.self_attn_adapter\."),
        "lm.model.decoder.layers.{0}.self_attn.out_proj",
    ),
    (
        re.compile(r"model\.decoder\.layers\.(\d+)\.enc_attn_adapter\."),
        "lm.model.decoder.layers.{0}.encoder_attn.out_proj",
    ),
    (re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.ff_adapter\."), "lm.model.{0}.layers.{1}.fc2"),
)
# Parameter names of the original nn.Linear / PHMLinear / LowRankLinear -> vlcli's.
_SAMPLER_PARAMS = {
    "weight": "weight",
    "bias": "bias",
    "phm_rule": "rule",
    "W": "w",
    "W_left": "w_left",
    "W_right": "w_right",
    "b": "bias",
}
_ADAPTER = re.compile(r"adapters\.([^.]+)\.(down_sampler|up_sampler)\.(\w+)")
_LN = re.compile(r"(pre|post)_layer_norm\.(weight|bias)")
_LORA = re.compile(r"(.+\.(?:q_proj|v_proj|q|v))\.lora_(A|B)s\.([^.]+)")
_PROMPT_PARTS = {"0": "embedding", "1": "mlp.0", "3": "mlp.2"}
_PROMPT = re.compile(r"prompts\.([^.]+)\.prefix_embedding\.([013])\.(weight|bias)")
_OUTPUT_ADAPTER = re.compile(
    r"output_adapter\.(?:adapter\.(down_sampler|up_sampler)|(pre_layer_norm|post_layer_norm))\.(weight|bias)"
)
_BLOCK = r"(?:(feed_forward|self_attention|cross_attention)_)?"
_HYPER_SAMPLER = re.compile(
    _BLOCK + r"(up|down)_sampler_hyper_net\.(weight|bias)_generator\.0\.(weight|bias)"
)
_HYPER_LN = re.compile(_BLOCK + r"(pre|post)_layernorm_hypernet\.(weight|bias)_generator\.(weight|bias)")
_HYPER_FIXED = {
    "layer_id_embeddings.weight": "layer_embeddings.weight",
    "adapters_block_type.weight": "block_embeddings.weight",
    "task_hypernet.task_embeding_generator.0.weight": "projector.0.weight",
    "task_hypernet.task_embeding_generator.0.bias": "projector.0.bias",
    "task_hypernet.task_embeding_generator.2.weight": "projector.2.weight",
    "task_hypernet.task_embeding_generator.2.bias": "projector.2.bias",
    "LayerNorm.weight": "projector.3.weight",
    "LayerNorm.bias": "projector.3.bias",
}
_UNMAPPED = object()  # not a PEFT key: the backbone rule applies


def visual_prefix(family: str) -> str:
    """Where the original keeps the visual embedding: ``encoder.`` (T5) or ``model.encoder.`` (BART)."""
    return "encoder.visual_embedding." if family == "t5" else "model.encoder.visual_embedding."


def task_embedding_part(task: str) -> str:
    """The name :func:`original_key_map` gives the original's task embedding of ``task``."""
    return f"{TASK_EMBEDDINGS_KEY}[{task}]"


def _hypernet_key(stack: str, rest: str) -> str | None | object:
    """``rest`` of ``...{stack}.adapter_layers_hyper_net.rest`` -> vlcli key (None: drop)."""
    base = f"peft.hyperformer.{stack}."
    if rest in _HYPER_FIXED:
        return base + _HYPER_FIXED[rest]
    m = _HYPER_SAMPLER.fullmatch(rest)
    if m:
        block, side, what, param = m.groups()
        return base + f"generators.{block or SHARED}.{side}_{what}.{param}"
    m = _HYPER_LN.fullmatch(rest)
    if m:
        block, side, what, param = m.groups()
        if stack == "encoder" and block == "cross_attention":
            return None  # built by the original for every stack, used only in the decoder
        return base + f"generators.{block or SHARED}.{side}_ln_{what}.{param}"
    return _UNMAPPED


def original_key_map(model: nn.Module) -> Callable[[str], str | None]:
    """A function mapping one original key to the key of ``model`` (a VLModel), or None to drop it.

    Per-task module keys use the task's name; when ``model`` has only a ``shared`` module there (single
    mode) the first task's key maps to it and the other tasks' copies are dropped. Hyperformer task
    embeddings map to :func:`task_embedding_part` names that :func:`original_state_transform` merges.
    """
    family = model.family
    prefix = visual_prefix(family)
    stack_prefix = "" if family == "t5" else "model."
    controllers = _T5_CONTROLLERS if family == "t5" else _BART_CONTROLLERS
    model_keys = set(model.state_dict())
    own_obj_order = "visual_embedding.obj_order_embedding.weight" in model_keys
    claimed: dict[str, str] = {}  # single-mode target -> the original key mapped onto it

    def per_task(key: str, template: str, task: str) -> str | None:
        """``template`` with ``{}`` = the task (or ``shared`` in single mode)."""
        target = template.format(task)
        if target in model_keys:
            return target
        shared = template.format(SHARED)
        if shared not in model_keys:
            return target  # not in the model either way: reported as unexpected
        first = claimed.setdefault(shared, key)
        return shared if first == key else None  # another task's copy of the same tensor

    def peft_key(key: str) -> str | None | object:
        for pattern, target in controllers:
            m = pattern.match(key)
            if m:
                base = target.format(*m.groups()) + ".vl_adapter."
                rest = key[m.end() :]
                a = _ADAPTER.fullmatch(rest)
                if a and a.group(3) in _SAMPLER_PARAMS:
                    task, sampler, param = a.groups()
                    return per_task(key, base + "adapters.{}." + f"{sampler}.{_SAMPLER_PARAMS[param]}", task)
                if _LN.fullmatch(rest):
                    return base + rest
                return _UNMAPPED
        if key == "phm_rule":
            return "peft.phm_rule.rule"
        m = _LORA.fullmatch(key)
        if m:
            linear, which, task = m.groups()
            return per_task(key, f"lm.{linear}.vl_lora.pairs.{{}}.lora_{which}", task)
        if key.startswith(stack_prefix + "encoder.prompt_modules."):
            m = _PROMPT.fullmatch(key[len(stack_prefix + "encoder.prompt_modules.") :])
            if m:
                task, part, param = m.groups()
                return per_task(
                    key, "peft.encoder_prompts.prompts.{}." + f"{_PROMPT_PARTS[part]}.{param}", task
                )
            return _UNMAPPED
        m = _OUTPUT_ADAPTER.fullmatch(key)
        if m:
            sampler, norm, param = m.groups()
            return f"lm.lm_head.vl_parallel.{sampler or norm}.{param}"
        if key.startswith(stack_prefix + "shared_task_embed.task_to_embeddings."):
            return task_embedding_part(key[len(stack_prefix + "shared_task_embed.task_to_embeddings.") :])
        for stack in ("encoder", "decoder"):
            head = f"{stack_prefix}{stack}."
            if key.startswith(head + "task_embed."):
                return None  # the original's second and third reference to shared_task_embed
            if key.startswith(head + "adapter_layers_hyper_net."):
                return _hypernet_key(stack, key[len(head + "adapter_layers_hyper_net.") :])
        return _UNMAPPED

    def key_map(key: str) -> str | None:
        if key in _DROPPED:
            return None
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest == "obj_order_embedding.weight" and not own_obj_order:
                return None  # a second copy of the tied token embedding
            if rest.startswith(_UNUSED_BERT_PARTS):
                return None  # vis_use_transformer: BERT word embeddings / pooler, never used
            return "visual_embedding." + rest
        mapped = peft_key(key)
        if mapped is not _UNMAPPED:
            return mapped  # type: ignore[return-value]
        return "lm." + key

    return key_map


def original_state_transform(
    model: nn.Module,
) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """A function applied to a state dict renamed by :func:`original_key_map` (vlcli names), before loading.

    It stacks the original's per-task Hyperformer embeddings (``...task_embeddings.weight[T]``, one (512,)
    vector each) into ``peft.hyperformer.task_embeddings.weight`` in ``model``'s task order. The parts are
    left as they are (and so reported as unexpected, with the weight missing) when a task of ``model`` has
    none; parts of tasks ``model`` does not have are left too. Other entries pass through unchanged.
    """
    peft = getattr(model, "peft", None)
    hyper = peft["hyperformer"] if peft is not None and "hyperformer" in peft else None
    tasks = tuple(hyper["task_embeddings"].tasks) if hyper is not None else ()

    def transform(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = [task_embedding_part(t) for t in tasks]
        if not tasks or TASK_EMBEDDINGS_KEY in state or not all(p in state for p in parts):
            return state
        out = {k: v for k, v in state.items() if k not in parts}
        out[TASK_EMBEDDINGS_KEY] = torch.stack([state[p].reshape(-1) for p in parts])
        return out

    return transform


def to_original_key(key: str, family: str) -> str:
    """vlcli key -> original key (for writing original-compatible state dicts; backbone and visual keys)."""
    if key.startswith("visual_embedding."):
        return visual_prefix(family) + key[len("visual_embedding.") :]
    if key.startswith("lm."):
        return key[len("lm.") :]
    return key
