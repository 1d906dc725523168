"""Tokenizers: byte-level (the built-in models) and pretrained checkpoints' own (``tokenizers`` package, no
transformers), read from a Hugging Face folder's ``tokenizer.json`` or built from a GGUF file's metadata.

A pretrained tokenizer adds BOS exactly when the checkpoint's does: ``add_bos_token`` in tokenizer_config.json (or
``tokenizer.ggml.add_bos_token`` in a GGUF) when it is set, else what tokenizer.json's post-processor puts before
the text (a GGUF without the key: yes for SentencePiece vocabularies, no for byte-level BPE, as transformers does).
``encode(text, bos=True/False)`` overrides it. Its chat template, when the checkpoint has one, is
:attr:`HFTokenizer.chat_template`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import RagctxError
from .chat import ChatTemplate

__all__ = ["ByteTokenizer", "HFTokenizer", "gguf_tokenizer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens 0-255, then <bos>=256, <eos>=257, <pad>=258."""

    kind = "byte"
    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258
    add_bos = True
    chat_template = None

    @property
    def eos_ids(self) -> set[int]:
        return {self.eos_id}

    def encode(self, text: str, *, bos: bool | None = None) -> list[int]:
        return ([self.bos_id] if (self.add_bos if bos is None else bos) else []) + list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A pretrained checkpoint's tokenizer (a ``tokenizers.Tokenizer``) with its special tokens and chat template.

    Build it with :meth:`from_folder` (Hugging Face) or :func:`gguf_tokenizer` (GGUF metadata)."""

    kind = "hf"

    def __init__(self, tokenizer, *, bos_id: int | None, eos_ids: Iterable[int], add_bos: bool,
                 chat_template: ChatTemplate | None = None, source: str = "") -> None:
        self._tok = tokenizer
        self.source = source
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = bos_id
        self.eos_ids = {int(e) for e in eos_ids}
        self.eos_id = min(self.eos_ids) if self.eos_ids else None
        self.pad_id = self.eos_id if self.eos_id is not None else 0
        self.add_bos = bool(add_bos and bos_id is not None)
        self.chat_template = chat_template

    @classmethod
    def from_folder(cls, folder: str | Path, *, bos_id: int | None = None,
                    eos_id: int | list[int] | None = None) -> HFTokenizer:
        """tokenizer.json, with tokenizer_config.json / generation_config.json / chat_template.jinja when present.
        ``bos_id`` / ``eos_id`` (config.json's) are used when the tokenizer files do not name them."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise RagctxError(f"{path} is missing; a checkpoint folder needs its tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception type for a bad file
            raise RagctxError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0][:160]})") from None
        config = _json(folder / "tokenizer_config.json")
        generation = _json(folder / "generation_config.json")

        def token_id(token: Any) -> int | None:
            if isinstance(token, dict):
                token = token.get("content")
            return tok.token_to_id(token) if isinstance(token, str) else token

        bos = token_id(config.get("bos_token")) if config.get("bos_token") is not None else bos_id
        eos: Any = generation.get("eos_token_id", config.get("eos_token", eos_id))
        eos_ids = {token_id(e) for e in (eos if isinstance(eos, list) else [eos])} - {None}
        if "add_bos_token" in config:
            add_bos = bool(config["add_bos_token"])
        else:  # what the post-processor puts before the text
            with_specials = tok.encode("a", add_special_tokens=True).ids
            plain = tok.encode("a", add_special_tokens=False).ids
            prefix = with_specials[: len(with_specials) - len(plain)] if with_specials[-len(plain):] == plain else []
            add_bos = bos is not None and prefix[:1] == [bos]
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif isinstance(config.get("chat_template"), str):
            template = config["chat_template"]
        elif isinstance(config.get("chat_template"), list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in config["chat_template"] if isinstance(t, dict)}
            template = named.get("default")
        specials = {name: _content(config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        specials["bos_token"] = specials["bos_token"] or (tok.id_to_token(bos) if bos is not None else None)
        chat = ChatTemplate(template, specials, where=str(folder)) if template else None
        return cls(tok, bos_id=bos, eos_ids=eos_ids, add_bos=add_bos, chat_template=chat, source=str(folder))

    def encode(self, text: str, *, bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; special tokens written in it (``<|im_start|>``) become their ids. ``bos``: prepend
        BOS (None: as the checkpoint's tokenizer does)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        add = self.add_bos if bos is None else bos
        return ([self.bos_id] if add and self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RagctxError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return data if isinstance(data, dict) else {}


def _content(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


# llama.cpp's pre-tokenizer regexes by `tokenizer.ggml.pre` (llama-vocab.cpp): how text is split before BPE
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (_GPT2,), "gpt-2": (_GPT2,), "gpt2": (_GPT2,),
    # SmolLM, StarCoder: every digit alone, then GPT-2's split (SmolLM2's tokenizer.json: Digits + ByteLevel)
    "smollm": (r"\p{N}", _GPT2), "starcoder": (r"\p{N}", _GPT2), "refact": (r"\p{N}", _GPT2),
    "llama3": (_LLAMA3,), "llama-bpe": (_LLAMA3,), "llama-v3": (_LLAMA3,), "smaug-bpe": (_LLAMA3,),
    "qwen2": (_QWEN2,), "deepseek-r1-qwen": (_QWEN2,),
}


def gguf_tokenizer(meta: dict[str, Any], source: str, cache: Path | None = None) -> HFTokenizer:
    """The tokenizer a GGUF file's ``tokenizer.*`` metadata describes: byte-level BPE (``gpt2``: Llama 3, Qwen2,
    SmolLM) or SentencePiece BPE (``llama``: Llama 2, Mistral, TinyLlama, Gemma). Other vocabularies are refused.
    ``cache``: the GGUF file; its built tokenizer is kept in ragctx's cache (:mod:`ragctx.cache`) as tokenizer.json
    and read from there next time (building Gemma's 262K-token vocabulary takes ~3 s, reading it back ~0.5 s)."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise RagctxError(f"{source}: the file carries no tokenizer (tokenizer.ggml.tokens is missing); ragctx needs "
                          "the GGUF's own vocabulary")
    tok = None
    if cache is not None:
        from tokenizers import Tokenizer
        from tokenizers import __version__ as tokenizers_version

        from ..cache import cache_dir, cached, source_key

        key = source_key(cache, f"v1|{tokenizers_version}")
        stored = cached(cache_dir() / "tokenizers" / f"{key}.json",
                        lambda tmp: _build_gguf_tokenizer(meta, source).save(str(tmp)))
        tok = Tokenizer.from_file(str(stored)) if stored is not None else None
    if tok is None:
        tok = _build_gguf_tokenizer(meta, source)
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = {int(eos)} if eos is not None else set()
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None:
        eos_ids.add(int(eot))
    add_bos = meta.get("tokenizer.ggml.add_bos_token", meta.get("tokenizer.ggml.model") == "llama")
    template = meta.get("tokenizer.chat_template")
    name = {"bos_token": bos, "eos_token": eos, "unk_token": meta.get("tokenizer.ggml.unknown_token_id"),
            "pad_token": meta.get("tokenizer.ggml.padding_token_id")}
    specials = {k: tokens[int(v)] if v is not None and 0 <= int(v) < len(tokens) else None for k, v in name.items()}
    chat = ChatTemplate(template, specials, where=source) if isinstance(template, str) and template else None
    return HFTokenizer(tok, bos_id=int(bos) if bos is not None else None, eos_ids=eos_ids, add_bos=bool(add_bos),
                       chat_template=chat, source=source)


def _build_gguf_tokenizer(meta: dict[str, Any], source: str):
    """The ``tokenizers.Tokenizer`` of a GGUF file's vocabulary (BOS/EOS and the chat template are read apart)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    model = meta.get("tokenizer.ggml.model")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if model == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
        pre = meta.get("tokenizer.ggml.pre", "default")
        splits = PRE_TOKENIZERS.get(pre)
        if splits is None:
            raise RagctxError(f"{source}: pre-tokenizer '{pre}' is not known to ragctx (known: "
                              f"{', '.join(sorted(PRE_TOKENIZERS))}); its text would be split wrongly")
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    elif model == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab, _spm_merges(tokens, scores, types), unk_token=tokens[0] if types[0] == 2
                                   else None, fuse_unk=True, byte_fallback=True))
        # spaces become U+2581, one is prepended to the text's start (transformers' Llama tokenizer, tested there)
        # unless the file says not to (Gemma: add_space_prefix false)
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix
                                                     else "never", split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         *([decoders.Strip(" ", 1, 0)] if prefix else [])])
    else:
        raise RagctxError(f"{source}: tokenizer model '{model}' is not supported; ragctx builds 'gpt2' (byte-level "
                          "BPE) and 'llama' (SentencePiece BPE) vocabularies")
    # control tokens (type 3) and user-defined ones (type 4) are matched whole in the text
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])
    return tok


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a normal token into two tokens of the
    vocabulary, best-scored merged token first (how SentencePiece BPE ranks them)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[float, int, int, str, str]] = []
    for t, i in vocab.items():
        if types[i] != 1 or len(t) < 2:
            continue
        for cut in range(1, len(t)):
            a, b = t[:cut], t[cut:]
            if a in vocab and b in vocab:
                merges.append((-scores[i], vocab[a], vocab[b], a, b))
    merges.sort()
    return [(a, b) for *_, a, b in merges]
