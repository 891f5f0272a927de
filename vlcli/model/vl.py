"""VL-T5 / VL-BART: a transformers T5 / BART seq2seq LM fed with ``[text; visual]`` encoder input.

The backbone is used through its public entry points (``inputs_embeds``, ``encoder_outputs``,
``generate``). Two VL-T5 semantics need more, and each is one small override of a single
transformers module, swapped in by class (state-dict keys are unchanged; see ``_install_text_span``):

* T5: the relative position bias is computed once, in the first encoder layer's
  ``SelfAttention.compute_bias``. VL-T5 fills only the text x text block and leaves 0 for every pair
  that involves a visual token; :class:`_VLT5Attention` does exactly that.
* BART: text embeddings get learned positions and ``layernorm_embedding``; visual tokens get neither
  (unless ``share_vis_lang_layer_norm``, which normalises both). :class:`_VLBartPositions` zeroes the
  positions of visual tokens and :class:`_VLBartEmbeddingNorm` normalises the text part only.

While the encoder runs, each overridden module holds the text length in ``vl_text_length``; outside
:meth:`VLModel.encode` it is None and the modules behave exactly like transformers' own. With no
visual tokens the model therefore gives the plain backbone's outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.modeling_outputs import BaseModelOutput, ModelOutput
from transformers.models.bart.modeling_bart import BartLearnedPositionalEmbedding
from transformers.models.t5.modeling_t5 import T5Attention

from vlcli.errors import VlcliError
from vlcli.model.visual import (
    VisualConfig,
    VisualEmbedding,
    VisualInputError,
    reduce_tokens,
    sparse_sample_indices,
)

IGNORE_INDEX = -100
LOSS_REDUCTIONS = ("example", "token")


class BackboneError(VlcliError):
    """A backbone that cannot carry the VL model (unsupported architecture or transformers version)."""


# ----------------------------------------------------------------------- the encoder overrides


class _VLT5Attention(T5Attention):
    """T5 self-attention whose relative position bias covers the first ``vl_text_length`` tokens only."""

    vl_text_length: int | None = None

    def compute_bias(self, query_length, key_length, device=None, past_seen_tokens=0):
        text = self.vl_text_length
        if text is None or (text >= query_length and text >= key_length):
            return super().compute_bias(
                query_length, key_length, device=device, past_seen_tokens=past_seen_tokens
            )
        block = super().compute_bias(text, text, device=device, past_seen_tokens=past_seen_tokens)
        bias = block.new_zeros(block.shape[0], block.shape[1], query_length, key_length)
        bias[:, :, :text, :text] = block
        return bias


class _VLBartPositions(BartLearnedPositionalEmbedding):
    """BART encoder positions for the text tokens only: prompts (the first ``vl_prefix_length`` tokens)
    and visual tokens (from ``vl_text_length`` on) get zeros; text positions start at 0."""

    vl_text_length: int | None = None
    vl_prefix_length: int = 0

    def forward(self, input_ids, *args, **kwargs):
        text, prefix = self.vl_text_length, self.vl_prefix_length
        length = input_ids.shape[1]
        if text is None or (prefix == 0 and text >= length):
            return super().forward(input_ids, *args, **kwargs)
        idx = torch.arange(length, device=self.weight.device)
        # Clamped to the text's own positions: visual tokens (zeroed below) must not index past the table.
        positions = nn.Embedding.forward(self, (idx - prefix).clamp(min=0, max=max(text - prefix - 1, 0)) + self.offset)
        keep = ((idx >= prefix) & (idx < text)).to(positions.dtype)
        return (positions * keep.unsqueeze(-1)).unsqueeze(0).expand(input_ids.shape[0], -1, -1)


class _VLBartEmbeddingNorm(nn.LayerNorm):
    """BART's ``layernorm_embedding`` applied to the first ``vl_text_length`` tokens only."""

    vl_text_length: int | None = None

    def forward(self, hidden):
        text = self.vl_text_length
        if text is None or text >= hidden.shape[1]:
            return super().forward(hidden)
        return torch.cat([super().forward(hidden[:, :text]), hidden[:, text:]], dim=1)


def _install_text_span(lm: nn.Module, family: str, share_vis_lang_layer_norm: bool) -> list[nn.Module]:
    """Swap the classes of the modules that must know the text length; return them."""
    encoder = lm.get_encoder()
    if family == "t5":
        attention = encoder.block[0].layer[0].SelfAttention
        if type(attention) is not T5Attention or not attention.has_relative_attention_bias:
            raise BackboneError(
                f"the T5 encoder's first self-attention is {type(attention).__name__} without the expected "
                "relative position bias; this transformers version is not supported (see pyproject.toml)"
            )
        attention.__class__ = _VLT5Attention
        return [attention]
    positions = getattr(encoder, "embed_positions", None)
    norm = getattr(encoder, "layernorm_embedding", None)
    if type(positions) is not BartLearnedPositionalEmbedding or type(norm) is not nn.LayerNorm:
        raise BackboneError(
            "the BART encoder lacks embed_positions / layernorm_embedding of the expected types; "
            "this transformers version is not supported (see pyproject.toml)"
        )
    positions.__class__ = _VLBartPositions
    if share_vis_lang_layer_norm:
        return [positions]
    norm.__class__ = _VLBartEmbeddingNorm
    return [positions, norm]


# ------------------------------------------------------------------------------------- routing


class TaskRouter:
    """The one routing point: the task of the batch being processed, read by task-specific modules."""

    def __init__(self) -> None:
        self.task: str | None = None

    @contextlib.contextmanager
    def scope(self, task: str | None) -> Iterator[None]:
        previous, self.task = self.task, task
        try:
            yield
        finally:
            self.task = previous


# -------------------------------------------------------------------------------------- outputs


@dataclass
class VLOutput(ModelOutput):
    """``loss`` (scalar, when labels are given), ``logits`` (B, T, vocab), ``example_loss`` (B,)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    example_loss: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None


@dataclass
class Encoded:
    """Encoder output plus the attention mask over ``[text; visual]`` and the text length."""

    outputs: BaseModelOutput
    attention_mask: torch.Tensor
    text_length: int


# ---------------------------------------------------------------------------------------- model


class VLModel(nn.Module):
    """VL-T5 / VL-BART around a transformers ``T5ForConditionalGeneration`` / ``BartForConditionalGeneration``.

    ``lm`` is the backbone (its token embeddings already sized to the VL tokenizer); ``visual`` the
    visual-input settings, or None for a text-only model (``--use_vision false``).
    """

    def __init__(
        self,
        lm: nn.Module,
        family: str,
        visual: VisualConfig | None,
        backbone: str = "",
        generation_defaults: dict[str, Any] | None = None,
    ):
        super().__init__()
        if family not in ("t5", "bart"):
            raise BackboneError(f"unknown model family {family!r}; expected t5 or bart")
        self.lm = lm
        self.family = family
        self.backbone = backbone
        self.visual = visual
        self.router = TaskRouter()
        config = lm.config
        if visual is not None:
            eps = getattr(config, "layer_norm_epsilon", 1e-6)
            self.visual_embedding = VisualEmbedding(visual, family, config.d_model, eps)
        share = bool(visual and visual.share_vis_lang_layer_norm and family == "bart")
        # Not registered as submodules: they already belong to ``lm``. Found again after a deepcopy.
        self._span_paths = [_path_of(lm, m) for m in _install_text_span(lm, family, share)]
        self.generation_defaults = dict(generation_defaults or {})
        # The in-model CLIP encoder of raw_* feature types (vlcli.model.image_encoder), set by build_model.
        self.visual_encoder: nn.Module | None = None
        self.lambda_z = 0.0  # weight of the adapter-activation penalty (--track_z / --lambda_z)

    # ------------------------------------------------------------------------------ properties

    @property
    def config(self):
        """The backbone's transformers config."""
        return self.lm.config

    @property
    def vocab_size(self) -> int:
        return self.lm.get_input_embeddings().num_embeddings

    @property
    def d_model(self) -> int:
        return self.lm.config.d_model

    def _span_modules(self) -> list[nn.Module]:
        return [self.lm.get_submodule(p) for p in self._span_paths]

    # --------------------------------------------------------------------------------- encoder

    def embed_visual(
        self,
        vis_feats: torch.Tensor,
        vis_pos: torch.Tensor,
        img_order_ids: torch.Tensor | None = None,
        obj_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
        reduce: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reduce and embed visual inputs -> ((B, N', d), mask (B, N') or None). See :mod:`vlcli.model.visual`.

        ``reduce=False``: no token reduction (downsample / sparse_sample) — region features of tasks that
        name boxes by position (RefCOCOg, VCR) keep every box even in a run whose grids are pooled.
        """
        if self.visual is None:
            raise VisualInputError(
                "this model was built with --use_vision false; do not pass visual features"
            )
        cfg = self.visual
        reduction = cfg.reduction if reduce else "none"
        if vis_feats.dtype == torch.float16:  # stored / collated as float16; pooled and projected in float32
            vis_feats = vis_feats.float()
        if vis_pos is None:
            vis_pos = vis_feats.new_zeros(*vis_feats.shape[:-1], 4)
        if vis_feats.dim() == 4:  # (B, I, V, F): reduce per image, then concatenate the images
            b, n_img, v, f = vis_feats.shape
            if vis_pos.shape != (b, n_img, v, 4):
                raise VisualInputError(
                    f"boxes must have shape {(b, n_img, v, 4)}; got {tuple(vis_pos.shape)}"
                )
            if img_order_ids is not None or obj_order_ids is not None:
                raise VisualInputError(
                    "order ids are built for (B, images, V, F) inputs; pass (B, N, F) to set them"
                )
            feats, boxes = reduce_tokens(
                vis_feats.reshape(b * n_img, v, f),
                vis_pos.reshape(b * n_img, v, 4),
                reduction,
                cfg.n_boxes,
            )
            kept = feats.shape[1]
            feats, boxes = feats.reshape(b, n_img * kept, f), boxes.reshape(b, n_img * kept, 4)
            device = vis_feats.device
            img_order_ids = torch.arange(n_img, device=device).repeat_interleave(kept)
            obj_order_ids = torch.arange(kept, device=device).repeat(n_img)
            if vis_attention_mask is not None:
                vis_attention_mask = vis_attention_mask[:, :, :kept].reshape(b, n_img * kept)
        elif vis_feats.dim() == 3:
            feats, boxes = reduce_tokens(vis_feats, vis_pos, reduction, cfg.n_boxes)
            kept = feats.shape[1]
            img_order_ids = None if img_order_ids is None else img_order_ids[..., :kept]
            obj_order_ids = None if obj_order_ids is None else obj_order_ids[..., :kept]
            if vis_attention_mask is not None:
                vis_attention_mask = vis_attention_mask[:, :kept]
        else:
            raise VisualInputError(
                f"visual features must be (B, N, feat_dim) or (B, images, N, feat_dim); got shape {tuple(vis_feats.shape)}"
            )
        embeds = self.visual_embedding(
            feats, boxes, img_order_ids, obj_order_ids, self.lm.get_input_embeddings()
        )
        if reduction == "sparse_sample" and self.training:
            idx = sparse_sample_indices(embeds.shape[0], embeds.shape[1], cfg.n_boxes, embeds.device)
            embeds = embeds.gather(1, idx.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
            if vis_attention_mask is not None:
                vis_attention_mask = vis_attention_mask.gather(1, idx)
        return embeds, vis_attention_mask

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw images (B, 3, H, W) or (B, I, 3, H, W) -> CLIP grid features (B, N, C) / (B, I, N, C)."""
        if self.visual_encoder is None:
            raise VisualInputError("this model has no image encoder; pass precomputed features (B, N, feat_dim)")
        if pixels.dim() == 5:
            b, n_img = pixels.shape[:2]
            out = self.visual_encoder(pixels.reshape(b * n_img, *pixels.shape[2:]))
            return out.reshape(b, n_img, *out.shape[1:])
        if pixels.dim() != 4:
            raise VisualInputError(
                f"raw images must be (B, 3, H, W) or (B, images, 3, H, W); got shape {tuple(pixels.shape)}"
            )
        return self.visual_encoder(pixels)

    def checkpoint_buffers(self) -> list[str]:
        """State keys adapter-only checkpoints must hold besides trainable parameters (see image_encoder)."""
        if self.visual_encoder is None:
            return []
        return self.visual_encoder.changing_buffers("visual_encoder.")

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vis_feats: torch.Tensor | None = None,
        vis_pos: torch.Tensor | None = None,
        *,
        img_order_ids: torch.Tensor | None = None,
        obj_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
        reduce_visual: bool = True,
    ) -> Encoded:
        """Run the joint encoder on ``[text; visual]`` (text only when ``vis_feats`` is None)."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.lm.config.pad_token_id)
        embeds = self.lm.get_input_embeddings()(input_ids)  # BART's embedding applies its own scale
        mask = attention_mask.to(torch.long)
        prefix = 0
        prompts = (
            self.peft["encoder_prompts"] if hasattr(self, "peft") and "encoder_prompts" in self.peft else None
        )
        if prompts is not None:  # [prompt; text]: prompts count as text for T5's bias and BART's layer norm
            p = prompts(embeds.shape[0]).to(embeds.dtype)
            prefix = p.shape[1]
            embeds = torch.cat([p, embeds], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], prefix), mask], dim=1)
        text_length = embeds.shape[1]
        if vis_feats is not None and self.visual_encoder is not None:
            vis_feats, vis_pos = self.encode_images(vis_feats), None
        if vis_feats is not None:
            vis, vis_mask = self.embed_visual(
                vis_feats, vis_pos, img_order_ids, obj_order_ids, vis_attention_mask, reduce=reduce_visual
            )
            embeds = torch.cat([embeds, vis.to(embeds.dtype)], dim=1)
            if vis_mask is None:
                vis_mask = mask.new_ones(vis.shape[:2])
            mask = torch.cat([mask, vis_mask.to(mask.dtype)], dim=1)
        spans = self._span_modules()
        for module in spans:
            module.vl_text_length = text_length
            module.vl_prefix_length = prefix
        try:
            outputs = self.lm.get_encoder()(inputs_embeds=embeds, attention_mask=mask, return_dict=True)
        finally:
            for module in spans:
                module.vl_text_length = None
                module.vl_prefix_length = 0
        return Encoded(BaseModelOutput(last_hidden_state=outputs.last_hidden_state), mask, text_length)

    # --------------------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vis_feats: torch.Tensor | None = None,
        vis_pos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task: str | None = None,
        *,
        decoder_input_ids: torch.Tensor | None = None,
        img_order_ids: torch.Tensor | None = None,
        obj_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
        reduce_visual: bool = True,
        loss_weights: torch.Tensor | None = None,
        loss_reduction: str = "example",
    ) -> VLOutput:
        """Teacher-forced forward pass; computes the loss when ``labels`` (pad = -100) are given.

        ``loss_reduction="example"``: per-example mean token loss (times ``loss_weights``), then the
        batch mean (VL-T5's convention); ``"token"``: mean over all target tokens of the batch.
        ``task`` selects task-specific modules (adapters, prompts) through :attr:`router`;
        ``reduce_visual=False`` keeps every visual token (see :meth:`embed_visual`).
        """
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}; got {loss_reduction!r}")
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("forward needs labels or decoder_input_ids")
            decoder_input_ids = self.lm.prepare_decoder_input_ids_from_labels(labels=labels)
        with self.router.scope(task):
            enc = self.encode(
                input_ids,
                attention_mask,
                vis_feats,
                vis_pos,
                img_order_ids=img_order_ids,
                obj_order_ids=obj_order_ids,
                vis_attention_mask=vis_attention_mask,
                reduce_visual=reduce_visual,
            )
            prefix = self.decoder_prompt_cache(enc)
            out = self.lm(
                encoder_outputs=enc.outputs,
                attention_mask=enc.attention_mask,
                decoder_input_ids=decoder_input_ids,
                use_cache=prefix is not None,
                return_dict=True,
                **({_cache_kwarg(self.lm): prefix} if prefix is not None else {}),
            )
        logits = out.logits
        loss = example_loss = None
        if labels is not None:
            token_loss = nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view_as(labels)
            counts = labels.ne(IGNORE_INDEX).sum(dim=1)
            example_loss = token_loss.sum(dim=1) / counts.clamp(min=1)
            if loss_reduction == "token":
                loss = token_loss.sum() / counts.sum().clamp(min=1)
            else:
                weighted = (
                    example_loss if loss_weights is None else example_loss * loss_weights.to(example_loss)
                )
                loss = weighted.mean()
            if self.lambda_z:
                loss = loss + self.lambda_z * self._z_penalty(loss)
        return VLOutput(
            loss=loss,
            logits=logits,
            example_loss=example_loss,
            encoder_last_hidden_state=enc.outputs.last_hidden_state,
        )

    def decoder_prompt_cache(self, enc: Encoded):
        """BART decoder prompts (spec §3.7): the prompt run once through the decoder, as a filled cache.

        Real decoder tokens attend to the prompt's per-layer keys / values and their positions start at L.
        None when the model has no decoder prompts.
        """
        prompts = (
            self.peft["decoder_prompts"] if hasattr(self, "peft") and "decoder_prompts" in self.peft else None
        )
        if prompts is None:
            return None
        hidden = enc.outputs.last_hidden_state
        decoder = self.lm.get_decoder()
        out = decoder(
            inputs_embeds=prompts(hidden.shape[0]).to(hidden.dtype),
            encoder_hidden_states=hidden,
            encoder_attention_mask=enc.attention_mask,
            use_cache=True,
            return_dict=True,
        )
        return out.cache if hasattr(out, "cache") else out.past_key_values

    def _z_penalty(self, like: torch.Tensor) -> torch.Tensor:
        """(1/K)·Σ_k mean(z_k²) over the K adapters that ran in this forward (``--track_z``); 0 when none did."""
        zs = []
        for module in self.modules():
            z = getattr(module, "z", None) if getattr(module, "track_z", False) else None
            if isinstance(z, torch.Tensor):
                zs.append(z.float().pow(2).mean())
                module.z = None
        return torch.stack(zs).mean() if zs else like.new_zeros(())

    # ------------------------------------------------------------------------------ generation

    def generation_config(self, num_beams: int, max_length: int, **options: Any) -> GenerationConfig:
        """A complete, explicit GenerationConfig: ids from the backbone, the family's defaults, then ``options``."""
        config = self.lm.config
        values: dict[str, Any] = {
            "decoder_start_token_id": config.decoder_start_token_id,
            "pad_token_id": config.pad_token_id,
            "eos_token_id": config.eos_token_id,
            "bos_token_id": getattr(config, "bos_token_id", None),
            "do_sample": False,
            **self.generation_defaults,
            **options,
            "num_beams": int(num_beams),
            "max_length": int(max_length),
        }
        if values["num_beams"] == 1:  # beam-search-only flags would only produce warnings
            for key in ("early_stopping", "length_penalty", "num_return_sequences"):
                values.pop(key, None)
        return GenerationConfig(**values)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vis_feats: torch.Tensor | None = None,
        vis_pos: torch.Tensor | None = None,
        task: str | None = None,
        *,
        num_beams: int,
        max_length: int,
        img_order_ids: torch.Tensor | None = None,
        obj_order_ids: torch.Tensor | None = None,
        vis_attention_mask: torch.Tensor | None = None,
        reduce_visual: bool = True,
        **options: Any,
    ) -> torch.Tensor:
        """Generated token ids (B, <= max_length), decoder start token first.

        ``num_beams`` and ``max_length`` (``--num_beams``, ``--gen_max_length``) are required; nothing is
        read from the backbone's own generation settings. ``options`` are further GenerationConfig fields.
        """
        with self.router.scope(task):
            enc = self.encode(
                input_ids,
                attention_mask,
                vis_feats,
                vis_pos,
                img_order_ids=img_order_ids,
                obj_order_ids=obj_order_ids,
                vis_attention_mask=vis_attention_mask,
                reduce_visual=reduce_visual,
            )
            config = self.generation_config(num_beams, max_length, **options)
            # transformers fills every unset field from the model's own generation_config: make that
            # ours too for the duration of the call, so nothing else can leak in.
            extra: dict[str, Any] = {}
            prefix = self.decoder_prompt_cache(enc)
            if prefix is not None:
                # The prompt's keys/values are an already-filled cache of L positions; generate() expects
                # the ids of cached positions in front of the new ones, so L placeholders precede the start
                # token (and are cut from the result). The cache is expanded for the beams here because
                # generate() expands tensors only.
                prefix.batch_repeat_interleave(config.num_beams)
                length = prefix.get_seq_length()
                start = torch.full(
                    (input_ids.shape[0], length + 1),
                    self.lm.config.decoder_start_token_id,
                    dtype=torch.long,
                    device=input_ids.device,
                )
                # the mask over [placeholders; start] tells generate() to feed only the uncached start token
                extra = {
                    _cache_kwarg(self.lm): prefix,
                    "decoder_input_ids": start,
                    "decoder_attention_mask": torch.ones_like(start),
                }
                config.max_length = config.max_length + length
            saved, self.lm.generation_config = self.lm.generation_config, config
            try:
                ids = self.lm.generate(
                    encoder_outputs=enc.outputs,
                    attention_mask=enc.attention_mask,
                    generation_config=config,
                    **extra,
                )
            finally:
                self.lm.generation_config = saved
            return ids if prefix is None else ids[:, length:]

    def answer_prefix(self) -> list[int]:
        """Decoder input before the first answer token: T5 [start]; BART [start, <s>] (targets begin with <s>)."""
        config = self.lm.config
        prefix = [config.decoder_start_token_id]
        if self.family == "bart":
            prefix.append(config.bos_token_id)
        return prefix

    @torch.no_grad()
    def score_candidates(
        self,
        input_ids: torch.Tensor,
        candidate_ids: Sequence[int] | torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vis_feats: torch.Tensor | None = None,
        vis_pos: torch.Tensor | None = None,
        task: str | None = None,
        **visual: Any,
    ) -> torch.Tensor:
        """(B, K) logits of the candidate tokens at the first answer position.

        Used for answers that are one token: NLVR2's ``true`` / ``false``, RefCOCOg's
        ``<vis_extra_id_k>``. The position is T5's decoder step 0 and BART's step 1 (after ``<s>``).
        """
        prefix = torch.tensor(self.answer_prefix(), device=input_ids.device)
        decoder_input_ids = prefix.expand(input_ids.shape[0], -1)
        out = self.forward(
            input_ids,
            attention_mask,
            vis_feats,
            vis_pos,
            task=task,
            decoder_input_ids=decoder_input_ids,
            **visual,
        )
        ids = torch.as_tensor(candidate_ids, device=out.logits.device)
        return out.logits[:, -1, ids]


def _cache_kwarg(lm: nn.Module) -> str:
    """transformers 5 renames ``past_key_values`` to ``cache``; use whichever this version's forward takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _path_of(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise BackboneError("internal error: the overridden module is not part of the backbone")
