"""Tokenizers that turn prompts into fixed-length id/mask arrays: HF T5 (from a folder) and bytes.

Both share one interface: `tokenize(prompts, max_length) -> (ids, mask, truncated)` with
ids int32 [B, L], mask bool [B, L] (True = real token, always a prefix of the row) and
truncated bool [B]. Every row ends with EOS (as T5 was trained); a prompt longer than
`max_length` keeps its first `max_length - 1` tokens plus EOS and is flagged as truncated.

Unicode policy: any Python `str` is accepted. Lone surrogates (e.g. "\\ud800", which cannot be
UTF-8 encoded) are replaced by U+FFFD, exactly what a UTF-8 decoder does with invalid input;
a correctly paired surrogate pair written as two code points becomes the character it encodes.
NUL and other control characters are kept (bytes 0..31 are ordinary byte tokens).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
# Files a HF tokenizer folder holds at least one of (sentencepiece model or tokenizers JSON).
HF_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


@runtime_checkable
class Tokenizer(Protocol):
    """What TextEncoder needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def tokenize(
        self, prompts: Sequence[str], max_length: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def save(self, path: str | os.PathLike) -> None: ...


def check_prompts(prompts: Sequence[str], name: str = "prompts") -> list[str]:
    """Returns `prompts` as a list after checking it is a non-empty sequence of str.

    Raises:
      ValueError: naming `name` for a bare string, an empty list, or a non-str element.
    """
    if isinstance(prompts, str | bytes):
        raise ValueError(f"{name} must be a list of str, got a single {type(prompts).__name__}")
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"{name} must be a non-empty list of str, got {prompts!r:.80}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(p).__name__}")
    return list(prompts)


def _check_max_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")


def sanitize(text: str) -> str:
    """Replaces lone surrogates by U+FFFD so the text is valid Unicode (see the module doc)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # Round-tripping through UTF-16 joins valid surrogate pairs and replaces lone halves.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _pack(
    rows: Sequence[Sequence[int]], max_length: int, eos_id: int | None, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncates (keeping a final EOS) and pads token rows into fixed [B, max_length] arrays."""
    batch = len(rows)
    ids = np.full((batch, max_length), pad_id, dtype=np.int32)
    mask = np.zeros((batch, max_length), dtype=bool)
    truncated = np.zeros((batch,), dtype=bool)
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) > max_length:
            truncated[i] = True
            ends_with_eos = eos_id is not None and row[-1] == eos_id
            row = [*row[: max_length - 1], eos_id] if ends_with_eos else row[:max_length]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
    return ids, mask, truncated


class ByteTokenizer:
    """ByT5-style tokenizer: UTF-8 bytes + 3; pad=0, eos=1, unk=2; 259 ids; needs no files."""

    pad_id = 0
    eos_id = 1
    unk_id = 2
    _OFFSET = 3

    @property
    def vocab_size(self) -> int:
        """Number of ids (3 specials + 256 bytes)."""
        return 256 + self._OFFSET

    def tokenize(
        self, prompts: Sequence[str], max_length: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """prompts -> (ids int32 [B, L], mask bool [B, L], truncated bool [B])."""
        prompts = check_prompts(prompts)
        _check_max_length(max_length)
        rows = []
        for p in prompts:
            # Keeping max_length bytes (not max_length - 1) lets _pack see, and flag, the cut.
            data = sanitize(p).encode("utf-8")[:max_length]
            row = (np.frombuffer(data, dtype=np.uint8).astype(np.int32) + self._OFFSET).tolist()
            rows.append([*row, self.eos_id])
        return _pack(rows, max_length, self.eos_id, self.pad_id)

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text, stopping at EOS and skipping special ids (invalid UTF-8 -> U+FFFD)."""
        data = bytearray()
        for i in ids:
            if i == self.eos_id:
                break
            if i >= self._OFFSET:
                data.append(int(i) - self._OFFSET)
        return data.decode("utf-8", "replace")

    def save(self, path: str | os.PathLike) -> None:
        """Writes the marker file that `load_tokenizer(path)` recognises."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, BYTE_TOKENIZER_FILE), "w", encoding="utf-8") as f:
            json.dump({"type": "byte", "version": 1}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ByteTokenizer:
        """Reads the marker written by `save`."""
        file = os.path.join(path, BYTE_TOKENIZER_FILE)
        with open(file, encoding="utf-8") as f:
            info = json.load(f)
        if info.get("type") != "byte":
            raise ValueError(f"{file}: expected a byte tokenizer marker, got {info!r}")
        return cls()


class HFT5Tokenizer:
    """The Hugging Face T5 tokenizer of a local folder (sentencepiece or tokenizer.json).

    Loaded with `AutoTokenizer.from_pretrained(folder)`: in transformers 5,
    `T5Tokenizer(vocab_file=...)` ignores the file and maps every word to <unk>.
    """

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        if hf_tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; T5 tokenizers define <pad>")

    @classmethod
    def load(cls, path: str | os.PathLike) -> HFT5Tokenizer:
        """Loads the tokenizer files of the HF folder `path` (offline)."""
        from transformers import AutoTokenizer  # heavy import, only when a folder is loaded

        path = os.fspath(path)
        if not any(os.path.exists(os.path.join(path, f)) for f in HF_TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{path}: no tokenizer files (expected one of {', '.join(HF_TOKENIZER_FILES)})"
            )
        return cls(AutoTokenizer.from_pretrained(path, local_files_only=True))

    @property
    def vocab_size(self) -> int:
        """Number of ids, including added tokens such as T5's <extra_id_*> sentinels."""
        return len(self._tok)

    @property
    def pad_id(self) -> int:
        """Id of <pad>."""
        return int(self._tok.pad_token_id)

    @property
    def eos_id(self) -> int | None:
        """Id of </s> (None if the tokenizer has none)."""
        eos = self._tok.eos_token_id
        return None if eos is None else int(eos)

    def tokenize(
        self, prompts: Sequence[str], max_length: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """prompts -> (ids int32 [B, L], mask bool [B, L], truncated bool [B])."""
        prompts = [sanitize(p) for p in check_prompts(prompts)]
        _check_max_length(max_length)
        # Untruncated ids, then our own truncation, so the caller learns what was cut.
        rows = self._tok(prompts, add_special_tokens=True, truncation=False, verbose=False)[
            "input_ids"
        ]
        return _pack(rows, max_length, self.eos_id, self.pad_id)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer files (`save_pretrained`) into `path`."""
        self._tok.save_pretrained(os.fspath(path))


def load_tokenizer(path: str | os.PathLike) -> ByteTokenizer | HFT5Tokenizer:
    """The tokenizer saved in folder `path`: the byte tokenizer if its marker is there, else HF."""
    if os.path.exists(os.path.join(path, BYTE_TOKENIZER_FILE)):
        return ByteTokenizer.load(path)
    return HFT5Tokenizer.load(path)
