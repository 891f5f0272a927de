"""Bottleneck adapters, Compacter (PHM) adapters and low-rank adapters (spec §3.2-3.4).

One :class:`AdapterController` sits at each insertion point (:func:`vlcli.peft.slots.adapter_slots`):
``out = x + LN_post(U·gelu(D·LN_pre(x) + b_D) + b_U)``, with D / U plain Linear layers (adapter),
:class:`PHMLinear` (Compacter) or :class:`LowRankLinear` (low-rank adapter). Modes: one adapter per
task ("multiple"), one for all tasks ("single", ``use_single_adapter``), or per-task adapters sharing
task 0's up and/or down projection ("half-shared", ``share_up_sampler`` / ``share_down_sampler``).
The pre/post layer norms belong to the controller and are shared by the tasks of that slot.

Initialisation (one scheme for both backbones; the original used N(0, 0.02) on BART and PyTorch's
default on T5): Linear weights N(0, 0.02), biases 0; PHM rules N(0, phm_init_range); PHM and low-rank
factors Xavier-uniform with gain √2; layer norms 1 / 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

INIT_STD = 0.02


@dataclass(frozen=True)
class AdapterSpec:
    """What every controller of one model is built with."""

    kind: str  # "adapter" | "compacter" | "lradapter"
    tasks: tuple[str, ...]
    d_model: int
    reduction_factor: int
    single: bool
    share_up: bool = False
    share_down: bool = False
    ln_before: bool = False
    ln_after: bool = False
    phm_n: int = 2
    phm_rank: int = 1
    factorized_phm: bool = False
    shared_phm_rule_over_tasks: bool = False
    phm_init_range: float = 0.01
    low_rank_rank: int = 1

    @property
    def bottleneck(self) -> int:
        return self.d_model // self.reduction_factor


class PHMLinear(nn.Module):
    """Parameterised hypercomplex multiplication layer: H = Σ_i A_i ⊗ W_i, y = x·H + b (H is in×out)."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n: int,
        rank: int = 1,
        factorized: bool = False,
        rule: nn.Parameter | None = None,
        init_range: float = 0.01,
    ):
        super().__init__()
        if d_in % n or d_out % n:
            raise ValueError(f"hypercomplex_division {n} must divide {d_in} and {d_out}")
        self.n, self.d_in, self.d_out, self.factorized = n, d_in, d_out, factorized
        self.rule = rule if rule is not None else nn.Parameter(torch.empty(n, n, n).normal_(0, init_range))
        gain = math.sqrt(2)
        if factorized:
            self.w_left = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, d_in // n, rank), gain=gain))
            self.w_right = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, rank, d_out // n), gain=gain))
        else:
            self.w = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, d_in // n, d_out // n), gain=gain))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def weight(self) -> torch.Tensor:
        w = torch.bmm(self.w_left, self.w_right) if self.factorized else self.w
        # Σ_i kron(A_i, W_i): (n, n, n) x (n, a, b) -> (n·a, n·b)
        h = torch.einsum("ipq,iab->paqb", self.rule, w)
        return h.reshape(self.d_in, self.d_out)

    def forward(self, x):
        return x @ self.weight() + self.bias


class LowRankLinear(nn.Module):
    """y = x·(W_left W_right) + b with W_left ∈ R^{in×k}, W_right ∈ R^{k×out}."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        gain = math.sqrt(2)
        self.w_left = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d_in, rank), gain=gain))
        self.w_right = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, d_out), gain=gain))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return (x @ self.w_left) @ self.w_right + self.bias


def _linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.normal_(layer.weight, std=INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


class Adapter(nn.Module):
    """One task's bottleneck: U·gelu(D·x + b_D) + b_U (no residual; the controller adds it)."""

    track_z = False  # set by apply_peft with --track_z: keep the bottleneck activation of the latest call

    def __init__(self, down: nn.Module, up: nn.Module):
        super().__init__()
        self.down_sampler = down
        self.up_sampler = up
        self.z: torch.Tensor | None = None

    def forward(self, x):
        z = F.gelu(self.down_sampler(x), approximate="tanh")
        if self.track_z:
            self.z = z
        return self.up_sampler(z)


class AdapterController(nn.Module):
    """The adapter(s) of one insertion point, selected by the router's task."""

    parameter_group = "adapters"

    def __init__(self, spec: AdapterSpec, router, global_rule: nn.Parameter | None = None):
        super().__init__()
        self._router = (router,)  # a tuple: the router is shared state, not a submodule
        self.single = spec.single
        d, m = spec.d_model, spec.bottleneck
        first_rules: dict[str, nn.Parameter] = {}

        def projection(d_in: int, d_out: int, which: str, task_index: int) -> nn.Module:
            if spec.kind == "adapter":
                return _linear(d_in, d_out)
            if spec.kind == "lradapter":
                return LowRankLinear(d_in, d_out, spec.low_rank_rank)
            rule = global_rule
            if rule is None and spec.shared_phm_rule_over_tasks and task_index > 0:
                rule = first_rules[which]
            layer = PHMLinear(
                d_in, d_out, spec.phm_n, spec.phm_rank, spec.factorized_phm, rule, spec.phm_init_range
            )
            first_rules.setdefault(which, layer.rule)
            return layer

        keys = ["shared"] if spec.single else list(spec.tasks)
        adapters: dict[str, Adapter] = {}
        for i, key in enumerate(keys):
            first = adapters.get(keys[0])
            down = (
                first.down_sampler if first is not None and spec.share_down else projection(d, m, "down", i)
            )
            up = first.up_sampler if first is not None and spec.share_up else projection(m, d, "up", i)
            adapters[key] = Adapter(down, up)
        self.adapters = nn.ModuleDict(adapters)
        self.pre_layer_norm = nn.LayerNorm(d) if spec.ln_before else None
        self.post_layer_norm = nn.LayerNorm(d) if spec.ln_after else None

    def active(self) -> Adapter:
        if self.single:
            return self.adapters["shared"]
        task = self._router[0].task
        if task not in self.adapters:
            raise ValueError(
                f"no adapter for task {task!r}; the model was built for tasks {list(self.adapters)}"
            )
        return self.adapters[task]

    def forward(self, x):
        z = self.pre_layer_norm(x) if self.pre_layer_norm is not None else x
        a = self.active()(z)
        if self.post_layer_norm is not None:
            a = self.post_layer_norm(a)
        return x + a


class OutputAdapter(nn.Module):
    """The LM-head adapter (spec §3.8): logits += LN_post(U·gelu(D·LN_pre(h))), D: d→d/16, U: d/16→vocab.

    Parallel to the LM head, no residual (it adds to the logits); the original crashed before reaching it.
    """

    parameter_group = "LM-head adapter"

    def __init__(self, d_model: int, vocab_size: int, ln_before: bool, ln_after: bool):
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(d_model) if ln_before else None
        self.down_sampler = _linear(d_model, d_model // 16)
        self.up_sampler = _linear(d_model // 16, vocab_size)
        self.post_layer_norm = nn.LayerNorm(vocab_size) if ln_after else None

    def forward(self, h):
        z = self.pre_layer_norm(h) if self.pre_layer_norm is not None else h
        out = self.up_sampler(F.gelu(self.down_sampler(z), approximate="tanh"))
        return self.post_layer_norm(out) if self.post_layer_norm is not None else out
