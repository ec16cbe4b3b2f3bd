"""A ``tokenizer.json`` rebuilt from a GGUF file's ``tokenizer.ggml.*`` metadata.

llama.cpp stores a byte-level BPE tokenizer as three parallel lists (``tokens``, ``token_type``)
plus ``merges`` and the name of its pre-tokenizer (``tokenizer.ggml.pre``). This module turns them
back into a ``tokenizers.Tokenizer`` that encodes as the original Hugging Face tokenizer did:
the same vocabulary ids, the same merge ranks, the same text splitting, control tokens kept whole.

Input is a plain dict of metadata values (key → Python value), so the module knows nothing of
``GGUFReader``. Imports no torch.
Non-goals: sentencepiece (``tokenizer.ggml.model == "llama"``) and unigram vocabularies;
pre-tokenizers other than the ones named in ``PRE_TOKENIZERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from specdec.core.errors import SpecdecError

# llama.cpp's token types (enum llama_token_type).
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3  # special: <|im_start|>, <|endoftext|>; matched whole, skipped when decoding
TOKEN_USER_DEFINED = 4  # added but not special: matched whole, kept when decoding


class GGUFTokenizerError(SpecdecError):
    """The GGUF file describes a tokenizer this module cannot rebuild."""


def _byte_level() -> pre_tokenizers.PreTokenizer:
    # GPT-2's split regex, then bytes → printable characters; no space added before the text.
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
    # SmolLM's Hugging Face tokenizer: every digit its own piece, then GPT-2 byte level (llama.cpp's
    # LLAMA_VOCAB_PRE_TYPE_SMOLLM splits on \p{N} first for the same reason).
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


# tokenizer.ggml.pre → the pre-tokenizer its vocabulary was trained with.
PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "gpt-2": _byte_level,
    "smollm": _smollm,
}


def build_tokenizer(meta: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer the metadata describes (keys as in the GGUF file: ``tokenizer.ggml.*``)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFTokenizerError(
            f"tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') is supported"
        )
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise GGUFTokenizerError(
            f"tokenizer.ggml.pre is {pre!r}; supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise GGUFTokenizerError("the GGUF file has no tokenizer.ggml.tokens (no vocabulary)")
    token_types: list[int] = list(
        meta.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens))
    )
    if len(token_types) != len(tokens):
        raise GGUFTokenizerError(
            f"{len(tokens)} tokens but {len(token_types)} token types in the GGUF metadata"
        )
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFTokenizerError("the GGUF vocabulary has duplicate tokens")
    merges = [_merge_pair(m) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(
        [
            AddedToken(token, special=token_type == TOKEN_CONTROL, normalized=False)
            for token, token_type in zip(tokens, token_types, strict=True)
            if token_type in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
        ]
    )
    tok.post_processor = _post_processor(meta, tokens)
    return tok


def _merge_pair(merge: str) -> tuple[str, str]:
    """``"Ġ t"`` → ``("Ġ", "t")``: byte-level tokens hold no spaces, so one space separates."""
    left, sep, right = merge.partition(" ")
    if not (left and sep and right):
        raise GGUFTokenizerError(f"malformed merge {merge!r} in tokenizer.ggml.merges")
    return left, right


def _post_processor(meta: Mapping[str, Any], tokens: list[str]) -> processors.PostProcessor:
    """ByteLevel offsets, with the BOS token in front when the file asks for one."""
    byte_level = processors.ByteLevel(trim_offsets=False)
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if not meta.get("tokenizer.ggml.add_bos_token", False) or bos_id is None:
        return byte_level
    bos = tokens[bos_id]
    template = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return processors.Sequence([byte_level, template])


def special_token(meta: Mapping[str, Any], role: str) -> str | None:
    """The text of the ``role`` token (``bos``, ``eos``, ``unknown``, ``padding``), if any."""
    index = meta.get(f"tokenizer.ggml.{role}_token_id")
    tokens = meta["tokenizer.ggml.tokens"]
    return None if index is None or not 0 <= index < len(tokens) else str(tokens[index])
