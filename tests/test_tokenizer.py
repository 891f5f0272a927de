"""The VL tokenizer on tiny locally trained T5 and BART tokenizers (no network)."""

from __future__ import annotations

import pytest

from tests.tiny import make_bart_tokenizer_dir, make_t5_tokenizer_dir
from vlcli.errors import VlcliError
from vlcli.model.tokenizer import TokenizerError, VLTokenizer, build_vl_tokenizer

T5_PIECES = 100


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Tokenizer directories, trained once per module: {"t5": path, "bart": path}."""
    root = tmp_path_factory.mktemp("tok")
    return {
        "t5": make_t5_tokenizer_dir(root / "t5", vocab_size=T5_PIECES),
        "bart": make_bart_tokenizer_dir(root / "bart"),
    }


@pytest.fixture(scope="module")
def base_len(dirs):
    """len() of each plain saved tokenizer (before the VL sentinels)."""
    from transformers import AutoTokenizer

    return {fam: len(AutoTokenizer.from_pretrained(str(p), local_files_only=True)) for fam, p in dirs.items()}


@pytest.fixture(scope="module", params=["t5", "bart"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tok(dirs, family) -> VLTokenizer:
    return build_vl_tokenizer(str(dirs[family]), family)


@pytest.fixture(scope="module")
def tok_lower(dirs, family) -> VLTokenizer:
    return build_vl_tokenizer(str(dirs[family]), family, do_lower_case=True)


def test_tiny_dirs_have_the_backbone_layout(dirs, base_len):
    from transformers import AutoTokenizer, BartTokenizer, T5Tokenizer

    t5 = AutoTokenizer.from_pretrained(str(dirs["t5"]), local_files_only=True)
    assert isinstance(t5, T5Tokenizer)
    assert base_len["t5"] == T5_PIECES + 100
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id, t5.bos_token_id) == (0, 1, 2, None)
    assert t5.convert_tokens_to_ids("<extra_id_0>") == T5_PIECES + 99
    assert t5.convert_tokens_to_ids("<extra_id_99>") == T5_PIECES

    bart = AutoTokenizer.from_pretrained(str(dirs["bart"]), local_files_only=True)
    assert isinstance(bart, BartTokenizer)
    assert 300 < base_len["bart"] <= 500
    ids = bart.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    assert ids == [0, 1, 2, 3, base_len["bart"] - 1]


def test_vocab_size_is_base_plus_200(tok, family, base_len):
    # T5's base already holds the 100 <extra_id_*>; BART gets them added here.
    plain = base_len[family] - (100 if family == "t5" else 0)
    assert tok.vocab_size == len(tok) == len(tok.hf) == plain + 200


@pytest.mark.parametrize("k", [0, 5, 99])
def test_vis_and_extra_ids_end_the_vocab_in_reverse(tok, family, base_len, k):
    plain = base_len[family] - (100 if family == "t5" else 0)
    assert tok.vis_token_id(k) == tok.vocab_size - 1 - k == plain + 199 - k
    assert tok.extra_token_id(k) == plain + 99 - k
    if family == "t5":
        assert tok.extra_token_id(k) == T5_PIECES + 99 - k


def test_sentinel_index_out_of_range(tok):
    with pytest.raises(IndexError):
        tok.vis_token_id(100)
    with pytest.raises(IndexError):
        tok.extra_token_id(-1)


def test_vis_token_is_one_id(tok, family):
    ids = tok.encode("<vis_extra_id_3>")
    body = ids[1:] if family == "bart" else ids  # BART starts with <s>
    assert body == [tok.vis_token_id(3), tok.eos_token_id]
    assert tok.vis_token_id(3) in tok.encode("a red cube <vis_extra_id_3> left of <vis_extra_id_0>")


def test_encode_ends_with_eos_and_respects_max_length(tok, family):
    text = "what color is the small rubber cylinder behind the large metal sphere"
    full = tok.encode(text)
    assert full[-1] == tok.eos_token_id
    assert tok.eos_token_id not in full[:-1]
    if family == "bart":
        assert full[0] == tok.hf.bos_token_id
    assert len(full) > 8
    cut = tok.encode(text, max_length=8)
    assert len(cut) == 8
    assert cut[-1] == tok.eos_token_id
    assert cut[:-1] == full[:7]
    assert tok.encode(text, max_length=len(full) + 5) == full


def test_max_length_too_small_is_a_user_error(tok):
    with pytest.raises(TokenizerError, match="max_length"):
        tok.encode("yes", max_length=0)


def test_batch_encode_pads_with_pad_id(tok):
    texts = ["yes", "what color is the big shiny ball behind the cube"]
    batch = tok.batch_encode(texts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert str(ids.dtype) == "torch.int64" and str(mask.dtype) == "torch.int64"
    short, long = tok.encode(texts[0]), tok.encode(texts[1])
    assert tuple(ids.shape) == tuple(mask.shape) == (2, len(long))
    assert ids[1].tolist() == long
    assert ids[0, : len(short)].tolist() == short
    assert ids[0, len(short) :].tolist() == [tok.pad_token_id] * (len(long) - len(short))
    assert mask[0].tolist() == [1] * len(short) + [0] * (len(long) - len(short))
    assert mask[1].tolist() == [1] * len(long)


def test_batch_encode_truncates(tok):
    batch = tok.batch_encode(["yes", "what color is the big shiny ball behind the cube"], max_length=5)
    assert tuple(batch["input_ids"].shape) == (2, 5)
    assert batch["input_ids"][1, -1].item() == tok.eos_token_id


def test_do_lower_case(tok, tok_lower):
    assert tok_lower.encode("What COLOR") == tok_lower.encode("what color") == tok.encode("what color")
    assert tok.encode("What COLOR") != tok.encode("what color")
    batch = tok_lower.batch_encode(["IS THE CUBE RED", "What COLOR"])
    for row, text in zip(batch["input_ids"], ["is the cube red", "what color"], strict=True):
        ids = tok.encode(text)
        assert row[: len(ids)].tolist() == ids


def test_decode_round_trips(tok):
    text = "what color is the small rubber cylinder"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.batch_encode([text, "no"])["input_ids"][1]) == "no"
    with_vis = tok.decode(tok.encode("a red cube <vis_extra_id_7>"), skip_special_tokens=False)
    assert "<vis_extra_id_7>" in with_vis and "a red cube" in with_vis
    assert tok.decode(tok.encode("a red cube <vis_extra_id_7>")) == "a red cube"


def test_building_twice_adds_nothing_more(dirs, tok, family, tmp_path):
    tok.hf.save_pretrained(str(tmp_path))
    again = build_vl_tokenizer(str(tmp_path), family)
    assert again.vocab_size == tok.vocab_size
    assert again.vis_token_id(0) == tok.vis_token_id(0)
    assert again.encode("is there a cyan sphere") == tok.encode("is there a cyan sphere")


def test_unknown_family(dirs):
    with pytest.raises(VlcliError, match="family 'gpt2'"):
        build_vl_tokenizer(str(dirs["t5"]), "gpt2")


def test_missing_local_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(VlcliError, match="--tokenizer") as info:
        build_vl_tokenizer(str(missing), "t5")
    assert str(missing) in str(info.value) and "no such directory" in str(info.value)
    assert "\n" not in str(info.value)


def test_directory_without_tokenizer_files(tmp_path):
    with pytest.raises(VlcliError, match="no bart tokenizer files"):
        build_vl_tokenizer(str(tmp_path), "bart")


def test_family_mismatch(dirs):
    with pytest.raises(VlcliError, match="not a t5 tokenizer"):
        build_vl_tokenizer(str(dirs["bart"]), "t5")


def test_t5_directory_with_only_spiece_model(tmp_path):
    """Original VL-T5 checkpoints ship only spiece.model; converting it needs protobuf (a dependency)."""
    import sentencepiece as spm

    from tests.tiny import corpus

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus()))
    out = tmp_path / "t5"
    out.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(out / "spiece"), vocab_size=100,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    (out / "spiece.vocab").unlink()
    tok = build_vl_tokenizer(str(out), "t5")
    assert tok.vocab_size == 300
    assert tok.extra_token_id(0) == 199 and tok.vis_token_id(0) == 299 and tok.vis_token_id(99) == 200
    assert tok.encode("what color is the circle")[-1] == tok.eos_token_id
