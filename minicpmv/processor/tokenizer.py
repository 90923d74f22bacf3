"""The MiniCPM-V 4.5 tokenizer: the official `tokenizer.json` (Qwen3 byte-level BPE + 105 added tokens).

Every special id the rest of the package needs is resolved BY NAME when the file is loaded, so a
tokenizer with a different numbering still works and a tokenizer missing one of them fails at once
(architecture spec §6.1). Text is never given a BOS or EOS: prompts are complete chat-templated strings.

`IncrementalDecoder` turns a stream of generated ids into text without ever emitting half of a
multi-byte character (one emoji can be split over several byte-level tokens).
"""

from __future__ import annotations

import codecs
from functools import cached_property
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as _HFTokenizer

# attribute name -> token text; all must exist in the vocabulary (spec §6.1, reference README)
SPECIAL_TOKENS: dict[str, str] = {
    "im_start_id": "<|im_start|>",
    "im_end_id": "<|im_end|>",
    "pad_id": "<|endoftext|>",
    "unk_id": "<unk>",
    "image_start_id": "<image>",
    "image_end_id": "</image>",
    "slice_start_id": "<slice>",
    "slice_end_id": "</slice>",
    "image_id_start_id": "<image_id>",
    "image_id_end_id": "</image_id>",
    "think_start_id": "<think>",
    "think_end_id": "</think>",
}


class Tokenizer:
    """Encode/decode plus the special ids, resolved by name.

    >>> tok = Tokenizer.from_pretrained("reference/tokenizer")   # doctest: +SKIP
    >>> tok.encode("Hello!")                                      # doctest: +SKIP
    [9707, 0]
    """

    im_start_id: int
    im_end_id: int
    pad_id: int
    unk_id: int
    image_start_id: int
    image_end_id: int
    slice_start_id: int
    slice_end_id: int
    image_id_start_id: int
    image_id_end_id: int
    think_start_id: int
    think_end_id: int
    newline_id: int

    def __init__(self, backend: _HFTokenizer, source: str = "<in memory>"):
        self.backend = backend
        self.source = source
        missing = []
        for attr, text in SPECIAL_TOKENS.items():
            tid = backend.token_to_id(text)
            if tid is None:
                missing.append(text)
            else:
                setattr(self, attr, tid)
        newline = backend.encode("\n", add_special_tokens=False).ids
        if len(newline) != 1:
            missing.append("'\\n' as a single token")
        if missing:
            raise ValueError(
                f"tokenizer {source} lacks {len(missing)} token(s) MiniCPM-V 4.5 needs: {', '.join(missing)}; "
                "use the official tokenizer.json of openbmb/MiniCPM-V-4_5"
            )
        self.newline_id = newline[0]
        added = backend.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids: frozenset[int] = frozenset(i for i, t in added.items() if t.special)
        self._added_text: dict[int, str] = {i: t.content for i, t in added.items()}

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """Load a `tokenizer.json` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return cls(_HFTokenizer.from_file(str(path)), source=str(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        """Load `tokenizer.json` from a model folder (or the file itself)."""
        path = Path(path)
        return cls.from_file(path / "tokenizer.json" if path.is_dir() else path)

    # ---- text <-> ids ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings (`<image>`, `<|im_end|>`, ...) become their ids."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids plus the (start, end) character span of `text` that each token covers."""
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (ints, numpy ints or a 1-D tensor). Nothing is dropped except, on request,
        the special tokens.

        (`<think>`/`</think>` and the tool tokens are added but not special, so they are always kept,
        as in the reference tokenizer.)
        """
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, text: str) -> int | None:
        return self.backend.token_to_id(text)

    def id_to_token(self, tid: int) -> str | None:
        return self.backend.id_to_token(tid)

    @property
    def vocab_size(self) -> int:
        """All ids, added tokens included (151,748 for MiniCPM-V 4.5)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Generation stops at `<|im_end|>` or `<|endoftext|>` (the reference `terminators`)."""
        return (self.im_end_id, self.pad_id)

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """Raw UTF-8 bytes of every id (built once, ~0.1 s): byte-level BPE pieces are mapped back
        through the GPT-2 byte<->character table; added tokens are their literal text."""
        to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
        table = [b""] * self.vocab_size
        for piece, tid in self.backend.get_vocab(with_added_tokens=False).items():
            table[tid] = bytes(to_byte[ch] for ch in piece)
        for tid, text in self._added_text.items():
            table[tid] = text.encode("utf-8")
        return table


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: each byte 0..255 is shown as one printable character.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 bytes
    (controls, space, ...) are mapped in order to chr(256), chr(257), ... So b' ' (32) -> 'Ġ' (288)
    and b'\\n' (10) -> 'Ċ' (266), which is why the vocabulary shows ' world' as 'Ġworld'.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class IncrementalDecoder:
    """Stream-safe detokenisation: feed ids one at a time, get back only complete characters.

    Works on bytes: each id contributes its raw bytes to an incremental UTF-8 decoder, which holds
    back an unfinished multi-byte character until its last byte arrives. Example: '🙂' is one token
    (bytes F0 9F 99 82) but a rarer emoji may arrive as two tokens [F0 9F] [98 80]: `add` returns ''
    for the first and the whole emoji for the second. Invalid byte sequences become U+FFFD exactly as
    in `Tokenizer.decode`; `flush()` emits U+FFFD for bytes still pending at the end. Nothing else is
    dropped (the reference `chat()` deletes id 0 = '!' from its output; we do not).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._bytes = tokenizer.token_bytes
        self._skip = tokenizer.special_ids if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still incomplete)."""
        if not 0 <= token_id < len(self._bytes):
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{len(self._bytes) - 1})")
        if token_id in self._skip:
            return ""
        return self._utf8.decode(self._bytes[token_id])

    def add_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.add(t) for t in token_ids)

    def flush(self) -> str:
        """End of stream: pending bytes of an unfinished character become U+FFFD."""
        return self._utf8.decode(b"", final=True)
