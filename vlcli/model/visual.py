"""Visual input pipeline of VL-T5 / VL-BART: token reduction and the visual embedding (spec §5.2-5.3).

Shapes: ``feats`` (B, N, feat_dim) and ``boxes`` (B, N, 4) for one image per example, or
(B, I, V, feat_dim) / (B, I, V, 4) for I images per example (NLVR2: I = 2). Reduction
(``downsample`` / ``oneddownsample``) runs per image on the features before the embedding;
``sparse_sample`` runs after it, in training only, over all visual tokens of an example.

Initialisation (explicit, the same for both backbones; the original differed by accident, spec §7.13):
every ``nn.Linear`` N(0, 0.02) with zero bias, every layer norm weight 1 (and bias 0), the image-order
embedding and the expanded object-order embedding N(0, 0.02). The object-order embedding of the
standard path is not a parameter of this module: it is the backbone's token embedding (rows
``<vis_extra_id_k>``), passed to :meth:`VisualEmbedding.forward`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from vlcli.errors import VlcliError

REDUCTIONS = ("none", "downsample", "oneddownsample", "sparse_sample")
N_IMAGES = 2
INIT_STD = 0.02


class VisualInputError(VlcliError):
    """Visual features or boxes whose shape does not fit the model's visual settings."""


@dataclass(frozen=True)
class VisualConfig:
    """The visual-input settings a model is built with (a subset of :class:`vlcli.config.Settings`)."""

    feat_dim: int = 2048
    pos_dim: int = 4
    n_boxes: int = 36
    reduction: str = "none"
    use_vis_order_embedding: bool = True
    use_vis_layer_norm: bool = True
    individual_vis_layer_norm: bool = True
    share_vis_lang_layer_norm: bool = False
    additional_visual_embedding_layers: int = 0
    vis_use_transformer: bool = False
    expand_vis_embedding: bool = False
    n_image_tokens: int = 4

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise VisualInputError(f"reduction {self.reduction!r}: expected one of {', '.join(REDUCTIONS)}")
        if self.pos_dim != 4:
            raise VisualInputError(f"--pos_dim {self.pos_dim}: boxes have 4 coordinates, pos_dim must be 4")

    @classmethod
    def from_settings(cls, settings: Any) -> VisualConfig:
        """Read the visual settings of a validated :class:`~vlcli.config.Settings`."""
        reduction = next(
            (r for r in ("downsample", "oneddownsample", "sparse_sample") if settings.get(r)), "none"
        )
        values = {
            f.name: settings.get(f.name) for f in fields(cls) if f.name not in {"feat_dim", "reduction"}
        }
        return cls(feat_dim=settings.derived.feat_dim, reduction=reduction, **values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------ reduction


def downsample(feats: torch.Tensor, n_boxes: int) -> torch.Tensor:
    """Max-pool a square grid of L = s*s tokens (B, L, D) to k*k tokens, k = floor(sqrt(n_boxes)), row-major."""
    b, length, dim = feats.shape
    side = math.isqrt(length)
    if side * side != length:
        raise VisualInputError(
            f"--downsample pools a square grid of visual tokens; got {length} tokens per image "
            "(use grid features such as CLIP RN101, or --oneddownsample)"
        )
    k = math.isqrt(n_boxes)
    grid = feats.transpose(1, 2).reshape(b, dim, side, side)
    pooled = nn.functional.adaptive_max_pool2d(grid, (k, k))
    return pooled.reshape(b, dim, k * k).transpose(1, 2)


def oned_downsample(feats: torch.Tensor, n_boxes: int) -> torch.Tensor:
    """Max-pool the token axis of (B, L, D) to ``n_boxes`` tokens."""
    return nn.functional.adaptive_max_pool1d(feats.transpose(1, 2), n_boxes).transpose(1, 2)


def reduce_tokens(
    feats: torch.Tensor, boxes: torch.Tensor, reduction: str, n_boxes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``downsample`` / ``oneddownsample`` to one image's tokens; boxes keep their first rows."""
    if reduction == "downsample":
        feats = downsample(feats, n_boxes)
    elif reduction == "oneddownsample":
        feats = oned_downsample(feats, n_boxes)
    else:
        return feats, boxes
    return feats, boxes[:, : feats.shape[1]]


def sparse_sample_indices(batch: int, tokens: int, keep: int, device: torch.device) -> torch.Tensor:
    """(B, keep) random token indices per example, sorted ascending (all tokens when keep >= tokens)."""
    if keep >= tokens:
        return torch.arange(tokens, device=device).expand(batch, tokens)
    order = torch.rand(batch, tokens, device=device).argsort(dim=-1)[:, :keep]
    return order.sort(dim=-1).values


# ------------------------------------------------------------------------------------ embedding


def _norm(family: str, dim: int, eps: float) -> nn.Module:
    """T5's RMS layer norm (weight only) or BART's LayerNorm (eps 1e-5)."""
    if family == "t5":
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        return T5LayerNorm(dim, eps=eps)
    return nn.LayerNorm(dim)


class _BertOnEmbeds(nn.Module):
    """A small BERT encoder applied to a (B, N, d) sequence (``vis_use_transformer``, BART only)."""

    def __init__(self, d_model: int):
        super().__init__()
        from transformers import BertConfig, BertModel

        heads = 12 if d_model % 12 == 0 else max(h for h in range(1, 13) if d_model % h == 0)
        config = BertConfig(
            vocab_size=1,
            hidden_size=d_model,
            num_hidden_layers=2,
            num_attention_heads=heads,
            intermediate_size=4 * d_model,
        )
        # No pooler and no word embeddings: the original built both but never used them (it feeds
        # inputs_embeds); dead trainable weights break DDP. Their original keys are dropped on import.
        self.bert_module = BertModel(config, add_pooling_layer=False)
        self.bert_module.embeddings.word_embeddings = None

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.bert_module(inputs_embeds=embeds).last_hidden_state


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(B, N) 'area' column as VL-T5 computes it: (p3 - p2) * (p1 - p0).

    The original assumes (x1, x2, y1, y2); BUTD boxes are (x1, y1, x2, y2), so this is not the true
    area. Kept as is: it is a learned input feature and pretrained VL-T5 weights expect it.
    """
    return (boxes[..., 3] - boxes[..., 2]) * (boxes[..., 1] - boxes[..., 0])


class VisualEmbedding(nn.Module):
    """Features + boxes (+ image / object order) -> visual token embeddings of width d_model."""

    parameter_group = "visual embedding"

    def __init__(self, config: VisualConfig, family: str, d_model: int, layer_norm_eps: float = 1e-6):
        super().__init__()
        self.config = config
        self.family = family
        self.d_model = d_model
        expand = config.expand_vis_embedding and family == "bart"
        self.expand = expand
        width = d_model * config.n_image_tokens if expand else d_model
        self.width = width
        individual = config.individual_vis_layer_norm
        use_ln = config.use_vis_layer_norm

        feat: list[nn.Module] = [nn.Linear(config.feat_dim, width)]
        if config.vis_use_transformer and family == "bart" and not expand:
            feat.append(_BertOnEmbeds(width))
        if use_ln and individual:
            feat.append(_norm(family, width, layer_norm_eps))
        if family == "t5" and individual:
            for _ in range(config.additional_visual_embedding_layers):
                feat += [nn.Linear(width, width), nn.ReLU()]
                if use_ln:
                    feat.append(_norm(family, width, layer_norm_eps))
        self.feat_embedding = nn.Sequential(*feat)

        pos: list[nn.Module] = [nn.Linear(config.pos_dim + 1, width)]
        if use_ln and individual:
            pos.append(_norm(family, width, layer_norm_eps))
        self.absolute_vis_pos_embedding = nn.Sequential(*pos)

        if config.use_vis_order_embedding:
            self.img_order_embedding = nn.Embedding(N_IMAGES, width)
            if expand:  # its own table, indexed 0..n_boxes-1 without reversal (as the original)
                self.obj_order_embedding = nn.Embedding(config.n_boxes, width)
        if use_ln and not individual:
            self.layer_norm = _norm(family, width, layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The documented initialisation (module docstring); BERT keeps its own (N(0, 0.02) as well)."""
        bert = {
            id(m) for child in self.modules() if isinstance(child, _BertOnEmbeds) for m in child.modules()
        }
        for module in self.modules():
            if id(module) in bert:
                continue
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=INIT_STD)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif type(module).__name__ == "T5LayerNorm":
                nn.init.ones_(module.weight)

    def forward(
        self,
        feats: torch.Tensor,
        boxes: torch.Tensor,
        img_order_ids: torch.Tensor | None = None,
        obj_order_ids: torch.Tensor | None = None,
        token_embedding: nn.Embedding | None = None,
    ) -> torch.Tensor:
        """(B, N, feat_dim), (B, N, 4) -> (B, N, d_model); expanded: (B, n_image_tokens, d_model) for N = 1.

        ``img_order_ids`` default to 0, ``obj_order_ids`` to 0..N-1 (shape (B, N) or (N,)).
        ``token_embedding`` is the backbone's input embedding (object order k -> row ``rows-1-k``);
        it is required when ``use_vis_order_embedding`` is on and the embedding is not expanded.
        """
        b, n, _ = feats.shape
        if boxes.shape != (b, n, 4):
            raise VisualInputError(f"boxes must have shape (B, N, 4) = {(b, n, 4)}; got {tuple(boxes.shape)}")
        if feats.shape[-1] != self.config.feat_dim:
            raise VisualInputError(
                f"visual features have {feats.shape[-1]} dimensions but the model was built with "
                f"feat_dim {self.config.feat_dim}; check --feature_type / --feat_dim"
            )
        if self.expand and n != 1:
            raise VisualInputError(
                f"--expand_vis_embedding needs one visual vector per example; got {n} "
                "(use --vis_pooling_output or pooled features)"
            )
        out = self.feat_embedding(feats)
        pos = torch.cat([boxes, box_area(boxes).unsqueeze(-1)], dim=-1).to(out.dtype)
        out = out + self.absolute_vis_pos_embedding(pos)
        if self.config.use_vis_order_embedding:
            device = feats.device
            if img_order_ids is None:
                img_order_ids = torch.zeros(n, dtype=torch.long, device=device)
            if obj_order_ids is None:
                obj_order_ids = torch.arange(n, dtype=torch.long, device=device)
            out = out + self.img_order_embedding(img_order_ids)
            if self.expand:
                out = out + self.obj_order_embedding(obj_order_ids)
            else:
                if token_embedding is None:
                    raise VisualInputError("the object-order embedding needs the backbone's token embedding")
                rows = token_embedding.num_embeddings
                out = out + token_embedding(rows - 1 - obj_order_ids)
        if hasattr(self, "layer_norm"):
            out = self.layer_norm(out)
        if self.expand:
            out = out.reshape(b, self.config.n_image_tokens, self.d_model)
        return out
