"""Hyperformer (spec §3.5): adapters whose weights a shared hyper-network generates per task and layer.

Pieces (all carry ``parameter_group = "hyper-network"``):

* :class:`TaskEmbeddings` — one 512-d vector per task, shared by encoder and decoder.
* :class:`HyperNet` — one per stack. A layer embedding ℓ_i (and, in ``efficient_unique_hyper_net``
  mode, a block-type embedding β_s: 0 feed-forward, 1 self-attention, 2 cross-attention) is
  concatenated with the task embedding t and projected::

      e = LayerNorm_p(W2 · ReLU(W1 · [t; ℓ_i (; β_s)] + c1) + c2)          (LayerNorm eps 1e-6)

  Linear generators map e to the adapter weights W_D ∈ R^{m×d}, b_D ∈ R^m, W_U ∈ R^{d×m},
  b_U ∈ R^d and, with ``add_layer_norm_before_adapter`` / ``add_layer_norm_after_adapter``, the
  weight and bias of the pre / post adapter LayerNorm. ``unique_hyper_net`` has one generator set
  per block type (encoder: feed_forward, self_attention; decoder: also cross_attention, generated
  even when no cross-attention adapter is attached); the efficient mode has a single set.
* :class:`HyperAdapter` — the module attached to a backbone Linear (``linear.vl_adapter``). It has no
  parameters of its own: it holds the shared modules in a plain tuple (not registered by
  ``nn.Module``), so they are registered once, by the caller, on the ModuleDict that
  :func:`build_hyperformer` returns. ``copy.deepcopy`` of a model that registers that ModuleDict keeps
  the references consistent (deepcopy's memo maps them to the copied modules); moving the model with
  ``.to()`` moves them only if they are registered on it. Its forward is::

      z = LN(y; generated pre weight/bias) if add_ln_before else y
      a = gelu_new(z W_Dᵀ + b_D) W_Uᵀ + b_U
      a = LN(a; generated post weight/bias) if add_ln_after
      return y + a

  The adapter LayerNorms are ``F.layer_norm`` with eps 1e-5 and the generated affine parameters.

Initialisation (one rule for both backbones; the original implementation differed between T5 and BART
by accident): every hyper-network ``nn.Linear`` (projector and generators) N(0, 0.02) with zero bias;
the layer and block-type embeddings N(0, 0.02); the task embeddings N(0, 1); the projector LayerNorm
weight 1, bias 0. The generated LayerNorm weights therefore start near zero (as in the original, which
also generated them from near-zero Linear layers with no +1 offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vlcli.peft.slots import adapter_slots, as_peft_linear

TASK_EMBEDDING_DIM = 512
PROJECTOR_HIDDEN_DIM = 128
DEFAULT_PROJECTED_DIM = 64
PROJECTOR_LN_EPS = 1e-6
ADAPTER_LN_EPS = 1e-5
INIT_STD = 0.02

BLOCK_TYPES = ("feed_forward", "self_attention", "cross_attention")  # index = block-type embedding row
ENCODER_BLOCKS = ("feed_forward", "self_attention")
DECODER_BLOCKS = ("feed_forward", "self_attention", "cross_attention")
SHARED = "shared"  # generator key of the efficient mode


def _init_linear(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=INIT_STD)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _linear(in_features: int, out_features: int) -> nn.Linear:
    linear = nn.Linear(in_features, out_features)
    _init_linear(linear)
    return linear


class TaskEmbeddings(nn.Module):
    """One ``dim``-vector per task (row ``i`` of ``weight`` is ``tasks[i]``), init N(0, 1)."""

    parameter_group = "hyper-network"

    def __init__(self, tasks: Sequence[str], dim: int = TASK_EMBEDDING_DIM) -> None:
        super().__init__()
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError("Hyperformer needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task names: {list(tasks)}")
        self.tasks = tasks
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(len(tasks), dim))
        nn.init.normal_(self.weight, mean=0.0, std=1.0)

    def index(self, task: str | None) -> int:
        """Row of ``task``; ValueError naming it when it is not one of the tasks."""
        try:
            return self.tasks.index(task)  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(
                f"Hyperformer has no task embedding for task {task!r}; known tasks: {', '.join(self.tasks)}"
            ) from None

    def __getitem__(self, task: str | None) -> torch.Tensor:
        return self.weight[self.index(task)]

    def forward(self, task: str | None) -> torch.Tensor:
        return self[task]

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}, dim={self.dim}"


@dataclass
class AdapterWeights:
    """Generated weights of one adapter (LayerNorm entries None when that LayerNorm is off)."""

    down_weight: torch.Tensor  # (m, d)
    down_bias: torch.Tensor  # (m,)
    up_weight: torch.Tensor  # (d, m)
    up_bias: torch.Tensor  # (d,)
    pre_ln_weight: torch.Tensor | None = None
    pre_ln_bias: torch.Tensor | None = None
    post_ln_weight: torch.Tensor | None = None
    post_ln_bias: torch.Tensor | None = None


class WeightGenerators(nn.Module):
    """Linear maps from the projected embedding e (dim p) to the weights of one adapter."""

    parameter_group = "hyper-network"

    def __init__(self, p: int, d_model: int, bottleneck: int, ln_before: bool, ln_after: bool) -> None:
        super().__init__()
        self.d_model, self.bottleneck = d_model, bottleneck
        self.down_weight = _linear(p, bottleneck * d_model)
        self.down_bias = _linear(p, bottleneck)
        self.up_weight = _linear(p, d_model * bottleneck)
        self.up_bias = _linear(p, d_model)
        self.pre_ln_weight = _linear(p, d_model) if ln_before else None
        self.pre_ln_bias = _linear(p, d_model) if ln_before else None
        self.post_ln_weight = _linear(p, d_model) if ln_after else None
        self.post_ln_bias = _linear(p, d_model) if ln_after else None

    def forward(self, e: torch.Tensor) -> AdapterWeights:
        d, m = self.d_model, self.bottleneck

        def maybe(generator: nn.Linear | None) -> torch.Tensor | None:
            return None if generator is None else generator(e)

        return AdapterWeights(
            down_weight=self.down_weight(e).view(m, d),
            down_bias=self.down_bias(e),
            up_weight=self.up_weight(e).view(d, m),
            up_bias=self.up_bias(e),
            pre_ln_weight=maybe(self.pre_ln_weight),
            pre_ln_bias=maybe(self.pre_ln_bias),
            post_ln_weight=maybe(self.post_ln_weight),
            post_ln_bias=maybe(self.post_ln_bias),
        )


class HyperNet(nn.Module):
    """The hyper-network of one stack: layer (and block-type) embeddings, projector, generators."""

    parameter_group = "hyper-network"

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        bottleneck: int,
        projected_dim: int,
        blocks: Sequence[str],
        *,
        efficient: bool = False,
        ln_before: bool = False,
        ln_after: bool = False,
        task_dim: int = TASK_EMBEDDING_DIM,
    ) -> None:
        super().__init__()
        blocks = tuple(blocks)
        unknown = [b for b in blocks if b not in BLOCK_TYPES]
        if unknown or not blocks:
            raise ValueError(
                f"HyperNet blocks must be a non-empty subset of {BLOCK_TYPES}, got {list(blocks)}"
            )
        if n_layers < 1 or d_model < 1 or bottleneck < 1:
            raise ValueError(
                f"HyperNet needs n_layers, d_model, bottleneck >= 1 (got {n_layers}, {d_model}, {bottleneck})"
            )
        p = DEFAULT_PROJECTED_DIM if projected_dim == -1 else projected_dim
        if p < 1:
            raise ValueError(f"projected_task_embedding_dim must be positive or -1, got {projected_dim}")
        self.n_layers, self.d_model, self.bottleneck, self.projected_dim = n_layers, d_model, bottleneck, p
        self.blocks = blocks
        self.efficient = efficient
        self.task_dim = task_dim

        self.layer_embeddings = nn.Embedding(n_layers, task_dim)
        nn.init.normal_(self.layer_embeddings.weight, mean=0.0, std=INIT_STD)
        if efficient:
            self.block_embeddings = nn.Embedding(len(BLOCK_TYPES), task_dim)
            nn.init.normal_(self.block_embeddings.weight, mean=0.0, std=INIT_STD)
        else:
            self.block_embeddings = None
        n_inputs = 3 if efficient else 2
        self.projector = nn.Sequential(
            _linear(n_inputs * task_dim, PROJECTOR_HIDDEN_DIM),
            nn.ReLU(),
            _linear(PROJECTOR_HIDDEN_DIM, p),
            nn.LayerNorm(p, eps=PROJECTOR_LN_EPS),
        )
        keys = (SHARED,) if efficient else blocks
        self.generators = nn.ModuleDict(
            {key: WeightGenerators(p, d_model, bottleneck, ln_before, ln_after) for key in keys}
        )

    def _check(self, layer: int, block: str) -> None:
        if block not in self.blocks:
            raise ValueError(f"this HyperNet generates {list(self.blocks)} adapters, not {block!r}")
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range for a {self.n_layers}-layer HyperNet")

    def project(self, task_embedding: torch.Tensor, layer: int, block: str) -> torch.Tensor:
        """e = LayerNorm(W2 · ReLU(W1 · [t; ℓ_layer (; β_block)] + c1) + c2), shape (p,)."""
        self._check(layer, block)
        parts = [task_embedding, self.layer_embeddings.weight[layer]]
        if self.block_embeddings is not None:
            parts.append(self.block_embeddings.weight[BLOCK_TYPES.index(block)])
        return self.projector(torch.cat(parts, dim=-1))

    def generate(self, e: torch.Tensor, block: str) -> AdapterWeights:
        """The adapter weights for block type ``block`` from the projected embedding ``e``."""
        if block not in self.blocks:
            raise ValueError(f"this HyperNet generates {list(self.blocks)} adapters, not {block!r}")
        return self.generators[SHARED if self.efficient else block](e)

    def forward(self, task_embedding: torch.Tensor, layer: int, block: str) -> AdapterWeights:
        return self.generate(self.project(task_embedding, layer, block), block)

    def extra_repr(self) -> str:
        return (
            f"n_layers={self.n_layers}, d_model={self.d_model}, bottleneck={self.bottleneck}, "
            f"p={self.projected_dim}, blocks={list(self.blocks)}, efficient={self.efficient}"
        )


class HyperAdapter(nn.Module):
    """A parameter-free adapter whose weights ``hypernet`` generates for ``router.task``.

    The shared modules are kept in the plain tuple ``shared = (hypernet, task_embeddings, router)``,
    which ``nn.Module`` does not register: they add no state-dict keys under the Linear.
    """

    parameter_group = "hyper-network"
    track_z = False  # set by apply_peft with --track_z
    z: torch.Tensor | None = None

    def __init__(
        self,
        hypernet: HyperNet,
        task_embeddings: TaskEmbeddings,
        router: object,
        layer: int,
        block: str,
        add_ln_before: bool = False,
        add_ln_after: bool = False,
    ) -> None:
        super().__init__()
        hypernet._check(layer, block)
        gen = hypernet.generators[SHARED if hypernet.efficient else block]
        if add_ln_before and gen.pre_ln_weight is None or add_ln_after and gen.post_ln_weight is None:
            raise ValueError(
                "the HyperNet was built without the adapter LayerNorm generators this adapter needs"
            )
        self.shared: tuple[HyperNet, TaskEmbeddings, object] = (hypernet, task_embeddings, router)
        self.layer = layer
        self.block = block
        self.add_ln_before = add_ln_before
        self.add_ln_after = add_ln_after

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        hypernet, task_embeddings, router = self.shared
        t = task_embeddings[getattr(router, "task", None)]
        w = hypernet.generate(hypernet.project(t, self.layer, self.block), self.block)

        def cast(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(y.dtype)

        d = y.shape[-1]
        z = y
        if self.add_ln_before:
            z = F.layer_norm(z, (d,), cast(w.pre_ln_weight), cast(w.pre_ln_bias), eps=ADAPTER_LN_EPS)
        a = F.gelu(F.linear(z, cast(w.down_weight), cast(w.down_bias)), approximate="tanh")
        if self.track_z:
            self.z = a
        a = F.linear(a, cast(w.up_weight), cast(w.up_bias))
        if self.add_ln_after:
            a = F.layer_norm(a, (d,), cast(w.post_ln_weight), cast(w.post_ln_bias), eps=ADAPTER_LN_EPS)
        return a + y

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer}, block={self.block}, add_ln_before={self.add_ln_before}, "
            f"add_ln_after={self.add_ln_after}"
        )


def stack_layers(lm: nn.Module, family: str) -> dict[str, int]:
    """Number of layers of the encoder and decoder stacks of a T5 / BART seq2seq LM."""
    if family == "t5":
        return {"encoder": len(lm.encoder.block), "decoder": len(lm.decoder.block)}
    if family == "bart":
        return {"encoder": len(lm.model.encoder.layers), "decoder": len(lm.model.decoder.layers)}
    raise ValueError(f"unknown model family {family!r}; expected t5 or bart")


def build_hyperformer(
    lm: nn.Module,
    family: str,
    tasks: Sequence[str],
    router: object,
    *,
    d_model: int,
    reduction_factor: int,
    projected_task_embedding_dim: int = -1,
    efficient: bool = False,
    cross_attention: bool = False,
    ln_before: bool = False,
    ln_after: bool = False,
) -> nn.ModuleDict:
    """Attach a :class:`HyperAdapter` to every adapter slot of ``lm``; return the modules to register.

    The returned ``ModuleDict({"task_embeddings", "encoder", "decoder"})`` holds every new parameter; the
    caller must register it on the model (the adapters only reference it). It is created on the device
    of ``lm``'s parameters, in float32.
    """
    if reduction_factor < 1 or d_model // reduction_factor < 1:
        raise ValueError(f"reduction_factor {reduction_factor} gives no bottleneck for d_model {d_model}")
    bottleneck = d_model // reduction_factor
    layers = stack_layers(lm, family)
    task_embeddings = TaskEmbeddings(tasks)
    hypernets = {
        stack: HyperNet(
            layers[stack],
            d_model,
            bottleneck,
            projected_task_embedding_dim,
            blocks,
            efficient=efficient,
            ln_before=ln_before,
            ln_after=ln_after,
        )
        for stack, blocks in (("encoder", ENCODER_BLOCKS), ("decoder", DECODER_BLOCKS))
    }
    modules = nn.ModuleDict({"task_embeddings": task_embeddings, **hypernets})
    first = next(lm.parameters(), None)
    if first is not None:
        modules.to(device=first.device)
    for slot in adapter_slots(lm, family, cross_attention):
        linear = as_peft_linear(slot.linear)
        if linear.out_features != d_model:
            raise ValueError(
                f"slot {slot.name} outputs {linear.out_features} features, not d_model={d_model}"
            )
        linear.vl_adapter = HyperAdapter(
            hypernets[slot.stack], task_embeddings, router, slot.layer, slot.block, ln_before, ln_after
        )
    return modules
