"""Tokenizers: byte-level (the built-in models) and Hugging Face ``tokenizer.json`` (pretrained checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RagctxError

__all__ = ["ByteTokenizer", "HFTokenizer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens 0-255, then <bos>=256, <eos>=257, <pad>=258."""

    kind = "byte"
    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        return ([self.bos_id] if bos else []) + list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face fast tokenizer from ``tokenizer.json`` (through the ``tokenizers`` package, no transformers)."""

    kind = "hf"

    def __init__(self, folder: str | Path, bos_id: int | None = None, eos_id: int | list[int] | None = None) -> None:
        from tokenizers import Tokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise RagctxError(f"{path} is missing; a checkpoint folder needs its tokenizer.json")
        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        extra = {}
        for name in ("tokenizer_config.json", "generation_config.json"):
            if (Path(folder) / name).is_file():
                extra.update(json.loads((Path(folder) / name).read_text()))
        self.bos_id = bos_id if bos_id is not None else self._token_id(extra.get("bos_token_id", extra.get("bos_token")))
        eos = eos_id if eos_id is not None else extra.get("eos_token_id", extra.get("eos_token"))
        self.eos_ids = {self._token_id(e) for e in (eos if isinstance(eos, list) else [eos])} - {None}
        self.eos_id = min(self.eos_ids) if self.eos_ids else None
        self.pad_id = self.eos_id if self.eos_id is not None else 0

    def _token_id(self, token) -> int | None:
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            return self._tok.token_to_id(token)
        return token

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
