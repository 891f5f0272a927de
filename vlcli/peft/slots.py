"""The one injection mechanism: backbone Linear layers that PEFT modules attach to.

Every insertion point of the paper is the output projection of a sublayer (spec §3.1) or a q / v
projection (LoRA, §3.6). Such a Linear gets its class swapped to :class:`PeftLinear`, which computes

    y = x·Wᵀ + b  (+ lora(x)) (+ parallel(x))      then    y = adapter(y)   (adapter returns y + its update)

The attached modules are children of the Linear (``...o.vl_adapter.*``, ``...q_proj.vl_lora.*``), so
the backbone's own state-dict keys do not change and ``deepcopy`` / DDP see ordinary submodules. The
active task reaches task-specific modules through the model's :class:`~vlcli.model.vl.TaskRouter`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn import functional as F


class PeftLinear(nn.Linear):
    """nn.Linear with optional parallel branches (LoRA, the LM-head adapter) and a sequential adapter."""

    vl_lora: nn.Module | None
    vl_parallel: nn.Module | None
    vl_adapter: nn.Module | None

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        lora = getattr(self, "vl_lora", None)
        if lora is not None:
            y = y + lora(x)
        parallel = getattr(self, "vl_parallel", None)
        if parallel is not None:
            y = y + parallel(x)
        adapter = getattr(self, "vl_adapter", None)
        if adapter is not None:
            y = adapter(y)
        return y


def as_peft_linear(linear: nn.Linear) -> PeftLinear:
    if type(linear) is nn.Linear:
        linear.__class__ = PeftLinear
    elif not isinstance(linear, PeftLinear):
        raise TypeError(f"cannot attach PEFT modules to {type(linear).__name__}")
    return linear


@dataclass(frozen=True)
class Slot:
    """One adapter insertion point: the Linear whose output the adapter transforms."""

    name: str  # e.g. "encoder.3.self_attention"
    stack: str  # "encoder" | "decoder"
    layer: int
    block: str  # "self_attention" | "cross_attention" | "feed_forward"
    linear: nn.Linear


def adapter_slots(lm: nn.Module, family: str, cross_attention: bool) -> list[Slot]:
    """The adapter insertion points of spec §3.1 (cross-attention only with ``add_adapter_cross_attn``)."""
    slots: list[Slot] = []
    if family == "t5":
        for stack_name in ("encoder", "decoder"):
            stack = getattr(lm, stack_name)
            for i, block in enumerate(stack.block):
                slots.append(
                    Slot(
                        f"{stack_name}.{i}.self_attention",
                        stack_name,
                        i,
                        "self_attention",
                        block.layer[0].SelfAttention.o,
                    )
                )
                if stack_name == "decoder" and cross_attention:
                    slots.append(
                        Slot(
                            f"{stack_name}.{i}.cross_attention",
                            stack_name,
                            i,
                            "cross_attention",
                            block.layer[1].EncDecAttention.o,
                        )
                    )
                slots.append(
                    Slot(
                        f"{stack_name}.{i}.feed_forward",
                        stack_name,
                        i,
                        "feed_forward",
                        block.layer[-1].DenseReluDense.wo,
                    )
                )
        return slots
    model = lm.model
    for stack_name in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, stack_name).layers):
            slots.append(
                Slot(
                    f"{stack_name}.{i}.self_attention",
                    stack_name,
                    i,
                    "self_attention",
                    layer.self_attn.out_proj,
                )
            )
            if stack_name == "decoder" and cross_attention:
                slots.append(
                    Slot(
                        f"{stack_name}.{i}.cross_attention",
                        stack_name,
                        i,
                        "cross_attention",
                        layer.encoder_attn.out_proj,
                    )
                )
            slots.append(Slot(f"{stack_name}.{i}.feed_forward", stack_name, i, "feed_forward", layer.fc2))
    return slots


def lora_targets(lm: nn.Module, family: str) -> list[tuple[str, nn.Linear]]:
    """q and v projections of every attention block (encoder self, decoder self and cross), spec §3.6."""
    targets: list[tuple[str, nn.Linear]] = []
    for name, module in lm.named_modules():
        if family == "t5" and type(module).__name__.endswith("T5Attention"):
            targets += [(f"{name}.q", module.q), (f"{name}.v", module.v)]
        elif family == "bart" and type(module).__name__ == "BartAttention":
            targets += [(f"{name}.q_proj", module.q_proj), (f"{name}.v_proj", module.v_proj)]
    return targets
