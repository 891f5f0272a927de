"""Key map from original VL-T5 / VL-BART / VL-Adapter ``state_dict`` names to vlcli's.

The original models subclass transformers' T5 / BART classes, so their keys are the backbone's keys
(``shared.weight``, ``encoder.block.0...`` for T5; ``model.encoder.layers.0...`` for BART) plus the
visual embedding inside the encoder (``encoder.visual_embedding.*`` / ``model.encoder.visual_embedding.*``).
vlcli composes instead: the backbone lives under ``lm.`` and the visual embedding under
``visual_embedding.``. The original also stores the tied object-order embedding a second time
(``...visual_embedding.obj_order_embedding.weight`` = the token embedding); that copy is dropped,
except with ``expand_vis_embedding`` where it is a table of its own. A leading ``module.`` (DDP) is
stripped before the map runs (:func:`vlcli.model.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# Unused by T5 since transformers 4.x (cross-attention has no relative bias); old checkpoints may hold it.
_DROPPED = {"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"}
_UNUSED_BERT_PARTS = (
    "feat_embedding.1.bert_module.embeddings.word_embeddings.",
    "feat_embedding.1.bert_module.pooler.",
)


def visual_prefix(family: str) -> str:
    """Where the original keeps the visual embedding: ``encoder.`` (T5) or ``model.encoder.`` (BART)."""
    return "encoder.visual_embedding." if family == "t5" else "model.encoder.visual_embedding."


def original_key_map(model: nn.Module) -> Callable[[str], str | None]:
    """A function mapping one original key to the key of ``model`` (a VLModel), or None to drop it."""
    family = model.family
    prefix = visual_prefix(family)
    own_obj_order = "visual_embedding.obj_order_embedding.weight" in dict(model.named_parameters())

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
        return "lm." + key

    return key_map


def to_original_key(key: str, family: str) -> str:
    """vlcli key -> original key (for writing original-compatible state dicts)."""
    if key.startswith("visual_embedding."):
        return visual_prefix(family) + key[len("visual_embedding.") :]
    if key.startswith("lm."):
        return key[len("lm.") :]
    return key
