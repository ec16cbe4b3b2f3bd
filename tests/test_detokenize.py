"""Incremental detokenization: the streamed pieces add up to decoding everything at once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from specdec.core.tokenizer import Tokenizer
from specdec.router.detokenize import Detokenizer

pytestmark = pytest.mark.unit

TEXTS = ["def add(a, b):\n    return a + b  # sum\n", "naïve café — 東京 ✓ emoji 🙂 done\n" * 3]


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_folder(model_dir / "target")


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("seed", range(5))
def test_pieces_add_up_to_the_whole_decode(tokenizer, text, seed):
    ids = tokenizer.encode(text, add_special_tokens=False)
    rng = random.Random(seed)
    detok = Detokenizer(tokenizer)
    pieces, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 5)  # speculation delivers tokens in bursts
        piece = detok.add(ids[i : i + n])
        assert "\ufffd" not in piece  # never half a character
        pieces.append(piece)
        i += n
    pieces.append(detok.flush())
    assert "".join(pieces) == tokenizer.decode(ids) == text


def test_stop_string_cuts_the_text_and_holds_back_its_prefix(tokenizer):
    ids = tokenizer.encode(TEXTS[0], add_special_tokens=False)
    detok = Detokenizer(tokenizer, stop=["return"])
    out = "".join(detok.add([t]) for t in ids)
    assert detok.stopped
    assert out == TEXTS[0][: TEXTS[0].index("return")]
    assert detok.flush() == ""
