"""The model's tokenizer, from a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library).

Imports no torch: the router tokenizes too, and its container has no torch.
Non-goals: chat templates, slow (sentencepiece-only) tokenizers.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from specdec.core.errors import CheckpointError


class Tokenizer:
    """Text ↔ token ids for one model folder."""

    def __init__(self, hf_tokenizer: _HFTokenizer) -> None:
        self._tok = hf_tokenizer

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (the model folder needs a tokenizer.json)")
        try:
            return cls(_HFTokenizer.from_file(str(path)))
        except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
            raise CheckpointError(f"{path}: not a valid tokenizer file ({exc})") from exc

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def vocabulary(self) -> dict[str, int]:
        """token string → id (for checking that two models share a tokenizer)."""
        return self._tok.get_vocab(with_added_tokens=True)


def check_same_tokenizer(target: Tokenizer, draft: Tokenizer, draft_folder: str | Path) -> None:
    """Refuse a draft whose tokenizer is not the target's: its token ids would mean other text."""
    if target.vocabulary() != draft.vocabulary():
        raise CheckpointError(
            f"{Path(draft_folder) / 'tokenizer.json'}: the draft's tokenizer "
            "differs from the target's; speculative decoding needs the same one"
        )
