"""specdec's chat-template renderer against transformers' ``apply_chat_template``, exactly.

The templates are real models' published ones, stored verbatim in ``tests/data/chat_templates``
(where each came from: the README there). For each, a model folder is written the way a
checkpoint carries it (``chat_template.jinja`` plus the special tokens in
``tokenizer_config.json``), specdec loads it with ``ChatTemplate.load``, and a
``PreTrainedTokenizerFast`` with the same template and special tokens renders the same
conversations with ``tokenize=False``: the two strings must be equal. A tiny word-level
vocabulary stands in for the real one: rendering never reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from specdec.core.errors import InvalidRequest
from specdec.router.http.chat_template import TEMPLATE_FILE, ChatTemplate

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent / "data" / "chat_templates"
SPECIAL_TOKENS: dict[str, dict[str, str]] = json.loads(
    (DATA / "special_tokens.json").read_text(encoding="utf-8")
)
NAMES = sorted(SPECIAL_TOKENS)

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "user": [{"role": "user", "content": "Write a haiku about caches."}],
    "system_user": [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}],
    "multi_turn": [
        SYSTEM,
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one, please.\n"},
        {"role": "assistant", "content": "  11  "},
        {"role": "user", "content": "Thanks!"},
    ],
    "unicode": [
        {"role": "user", "content": "Übersetze: «café», 東京, emoji 🚀, tab\there"},
        {"role": "assistant", "content": "Café — Tokyo 🚀"},
        {"role": "user", "content": "Quotes \"double\" and 'single', <tags> & {braces}"},
    ],
    "code": [{"role": "user", "content": "def add(a, b):\n    return a + b\n\nExplain."}],
}


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / TEMPLATE_FILE).write_text(
        (DATA / f"{name}.jinja").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(SPECIAL_TOKENS[name]), encoding="utf-8"
    )
    return folder


def _transformers_tokenizer(name: str) -> PreTrainedTokenizerFast:
    tokens = SPECIAL_TOKENS[name]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens.values()))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=next(iter(vocab))))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=(DATA / f"{name}.jinja").read_text(encoding="utf-8"),
        **tokens,
    )


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, PreTrainedTokenizerFast]:
    return {name: _transformers_tokenizer(name) for name in NAMES}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", NAMES)
def test_renders_like_transformers(
    tmp_path: Path,
    tokenizers: dict[str, PreTrainedTokenizerFast],
    name: str,
    conversation: str,
    add_generation_prompt: bool,
) -> None:
    messages = CONVERSATIONS[conversation]
    template = ChatTemplate.load(_folder(tmp_path, name))
    assert template is not None
    ours = template.render(messages, add_generation_prompt)
    theirs = tokenizers[name].apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    assert messages[-1]["content"].strip() in ours


def test_template_refusal_is_a_request_error(
    tmp_path: Path, tokenizers: dict[str, PreTrainedTokenizerFast]
) -> None:
    """Mistral's template raises on roles that do not alternate; transformers raises too, and
    specdec answers with a request error naming ``messages``, not a crash."""
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="alternate"):
        tokenizers["mistral-7b-instruct-v0.3"].apply_chat_template(messages, tokenize=False)
    template = ChatTemplate.load(_folder(tmp_path, "mistral-7b-instruct-v0.3"))
    assert template is not None
    with pytest.raises(InvalidRequest, match="alternate"):
        template.render(messages)


def test_tojson_options_like_transformers(tmp_path: Path) -> None:
    """``tojson`` takes transformers' options (indent, separators, sort_keys, ensure_ascii)."""
    source = (
        "{{ messages[0] | tojson(indent=2, sort_keys=true) }}|"
        "{{ messages[0] | tojson(separators=(',', ':')) }}|"
        "{{ messages[0] | tojson(ensure_ascii=true) }}"
    )
    (tmp_path / TEMPLATE_FILE).write_text(source, encoding="utf-8")
    template = ChatTemplate.load(tmp_path)
    assert template is not None
    messages = [{"role": "user", "content": "é<b>"}]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        chat_template=source,
    )
    theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert template.render(messages, add_generation_prompt=False) == theirs


def test_generation_tag_renders_its_body(tmp_path: Path) -> None:
    """Templates written for assistant masks wrap replies in ``{% generation %}``: the body
    renders unchanged, as in transformers."""
    source = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
        "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
    )
    (tmp_path / TEMPLATE_FILE).write_text(source, encoding="utf-8")
    template = ChatTemplate.load(tmp_path)
    assert template is not None
    messages = [{"role": "user", "content": "q "}, {"role": "assistant", "content": "a"}]
    assert template.render(messages, add_generation_prompt=False) == "q a"
