"""Tokenizer: reference encode/decode checks, special ids by name, stream-safe incremental decoding."""

from __future__ import annotations

import json
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from conftest import reference_path
from minicpmv.processor.tokenizer import SPECIAL_TOKENS, IncrementalDecoder, Tokenizer, _bytes_to_unicode


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained(reference_path("tokenizer"))


@pytest.fixture(scope="module")
def checks() -> dict:
    return json.loads(reference_path("tokenizer", "tokenizer_checks.json").read_text())


def byte_ids(tok: Tokenizer, data: bytes) -> list[int]:
    """One single-byte token per byte of `data` (byte-level BPE has a token for each of the 256 bytes)."""
    alphabet = _bytes_to_unicode()
    return [tok.token_to_id(alphabet[b]) for b in data]


def stream(tok: Tokenizer, ids: list[int], skip: bool = False) -> list[str]:
    dec = IncrementalDecoder(tok, skip_special_tokens=skip)
    return [dec.add(i) for i in ids] + [dec.flush()]


def test_reference_encode_decode_checks(tok, checks):
    for case in checks["encode_checks"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"], skip_special_tokens=False) == case["decoded"]
        assert "".join(stream(tok, case["ids"])) == case["decoded"]


def test_every_special_token_is_one_id(tok, checks):
    for text, tid in checks["special_token_ids"].items():
        assert tok.encode(text) == [tid], text
    assert tok.vocab_size == checks["len_tokenizer"]


def test_special_ids_are_resolved_by_name(tok, checks):
    ids = checks["special_token_ids"]
    for attr, text in SPECIAL_TOKENS.items():
        assert getattr(tok, attr) == ids[text], attr
    assert tok.newline_id == ids["\n"]
    assert (tok.im_start_id, tok.im_end_id) == (checks["bos_token_id"], checks["eos_token_id"])
    assert (tok.pad_id, tok.unk_id) == (checks["pad_token_id"], checks["unk_token_id"])
    assert tok.stop_ids == (checks["eos_token_id"], checks["pad_token_id"])


def test_decode_accepts_tensors(tok):
    ids = tok.encode("Hello, world!")
    assert tok.decode(torch.tensor(ids)) == "Hello, world!"


def test_no_bos_or_eos_is_added(tok):
    ids = tok.encode("a")
    assert len(ids) == 1 and tok.decode(ids) == "a"
    assert tok.encode("") == []


def test_skip_special_tokens_keeps_think_and_tool_tokens(tok, checks):
    kept = checks["skip_special_tokens_false_for"]
    ids = [tok.token_to_id(t) for t in kept] + [tok.image_start_id, tok.im_end_id, tok.unk_id]
    assert tok.decode(ids, skip_special_tokens=True) == "".join(kept)
    assert "".join(stream(tok, ids, skip=True)) == "".join(kept)
    assert tok.decode(ids) == "".join(kept) + "<image><|im_end|><unk>"


def test_missing_special_token_raises_naming_it():
    backend = HFTokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    with pytest.raises(ValueError, match=r"<\|im_start\|>.*<think>"):
        Tokenizer(backend, source="toy")


def test_incremental_decoder_waits_for_a_split_character(tok):
    ids = byte_ids(tok, "🙂".encode())  # 4 byte tokens for one character
    assert stream(tok, ids) == ["", "", "", "🙂", ""]
    assert tok.decode(ids) == "🙂"


def test_incremental_decoder_keeps_exclamation_mark(tok):
    ids = tok.encode("Hi! !")
    assert 0 in ids  # '!' is token 0, which the reference chat() deletes from its output
    assert "".join(stream(tok, ids)) == "Hi! !"


def test_incremental_decoder_pending_and_invalid_bytes_match_decode(tok):
    for data in (b"\xf0\x9f", b"a\xff b", b"\xe4\xbd", b"\xe4\xbd\xa0\xe5"):
        ids = byte_ids(tok, data)
        assert "".join(stream(tok, ids)) == tok.decode(ids), data


def test_incremental_decoder_rejects_ids_outside_the_vocabulary(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        IncrementalDecoder(tok).add(tok.vocab_size)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_roundtrip_text_streamed(tok, text):
    ids = tok.encode(text)
    assert "".join(stream(tok, ids)) == tok.decode(ids) == unicodedata.normalize("NFC", text)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_id_streams_match_decode(tok, data):
    pool = st.one_of(
        st.integers(0, tok.vocab_size - 1),  # anything, incl. special and added tokens
        st.sampled_from(byte_ids(tok, bytes(range(128, 256)))),  # lone UTF-8 continuation/lead bytes
    )
    ids = data.draw(st.lists(pool, max_size=12))
    skip = data.draw(st.booleans())
    assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)
