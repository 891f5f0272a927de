"""Built-in backbone architectures: configs, meta-device parameter counts, tiny test models."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from vlcli.errors import VlcliError
from vlcli.model.presets import (
    PRESETS,
    architecture_config,
    backbone_info,
    count_parameters,
    generation_defaults,
    model_class,
    tiny_config,
)

# Unique parameters of the public checkpoints' seq2seq LMs (tied embeddings once; BART's
# final_logits_bias is a buffer and not counted).
EXPECTED_COUNTS = {
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "facebook/bart-base": 139_420_416,
    "facebook/bart-large": 406_291_456,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_count_parameters_matches_public_checkpoints(name):
    assert count_parameters(name) == EXPECTED_COUNTS[name]


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("google-t5/t5-base", "t5-base"),
        ("bart-base", "facebook/bart-base"),
        ("bart-large", "facebook/bart-large"),
    ],
)
def test_aliases_count_like_their_checkpoint(alias, name):
    assert count_parameters(alias) == EXPECTED_COUNTS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_agrees_with_backbone_info(name):
    info = backbone_info(name)
    config = architecture_config(name)
    assert config.model_type == info.family
    assert config.d_model == info.d_model
    assert info.source == "preset"


def test_t5_base_config_values():
    c = architecture_config("t5-base")
    assert (c.d_model, c.d_ff, c.d_kv, c.num_heads) == (768, 3072, 64, 12)
    assert (c.num_layers, c.num_decoder_layers) == (12, 12)
    assert (c.vocab_size, c.relative_attention_num_buckets, c.feed_forward_proj) == (32128, 32, "relu")
    assert c.tie_word_embeddings is True
    assert (c.dropout_rate, c.layer_norm_epsilon) == (0.1, 1e-6)
    assert (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id) == (0, 1, 0)


def test_t5_large_config_values():
    c = architecture_config("t5-large")
    assert (c.d_model, c.d_ff, c.num_heads, c.num_layers, c.num_decoder_layers) == (1024, 4096, 16, 24, 24)


def test_bart_base_config_values():
    c = architecture_config("facebook/bart-base")
    assert (c.d_model, c.encoder_layers, c.decoder_layers) == (768, 6, 6)
    assert (c.encoder_attention_heads, c.decoder_attention_heads) == (12, 12)
    assert (c.encoder_ffn_dim, c.decoder_ffn_dim) == (3072, 3072)
    assert (c.vocab_size, c.max_position_embeddings, c.activation_function) == (50265, 1024, "gelu")
    assert c.scale_embedding is False
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id, c.decoder_start_token_id) == (1, 0, 2, 2)
    # transformers 5 keeps forced_bos_token_id in GenerationConfig, not in the model config.
    assert generation_defaults("facebook/bart-base")["forced_bos_token_id"] == 0
    assert generation_defaults("t5-base") == {}


def test_bart_large_config_values():
    c = architecture_config("bart-large")
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads) == (1024, 12, 12, 16)
    assert (c.encoder_ffn_dim, c.vocab_size) == (4096, 50265)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_tiny_model_forward_gives_finite_loss(family):
    import torch

    vocab = 100
    config = tiny_config(family, vocab)
    assert (config.d_model, config.vocab_size) == (32, vocab)
    torch.manual_seed(0)
    model = model_class(family)(config)
    assert model.config.model_type == family
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    input_ids = torch.randint(3, vocab, (2, 7))
    labels = torch.randint(3, vocab, (2, 5))
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)
    assert out.logits.shape == (2, 5, vocab)
    assert math.isfinite(out.loss.item())
    if family == "bart":
        assert config.max_position_embeddings == 128


def test_unknown_name_raises_with_name_in_message():
    with pytest.raises(VlcliError) as exc:
        architecture_config("my-org/weird-model")
    message = str(exc.value)
    assert "my-org/weird-model" in message
    assert "t5-base" in message and "facebook/bart-base" in message
    assert "from_pretrained" in message
    assert "\n" not in message
    with pytest.raises(VlcliError, match="nope"):
        count_parameters("nope")


def test_unknown_family_raises_with_family_in_message():
    with pytest.raises(VlcliError, match="gpt2"):
        tiny_config("gpt2", 100)


def test_import_does_not_load_torch():
    code = "import sys, vlcli.model.presets; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
