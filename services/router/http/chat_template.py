"""The model's chat template: Jinja2 (sandboxed) turning chat messages into one prompt text.

Where the template comes from, first found wins: a file given with ``--chat-template``; the
model folder's ``chat_template.jinja``; the ``chat_template`` string of its
``tokenizer_config.json``. It renders like Hugging Face's ``apply_chat_template``: an immutable
sandbox with ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` for the template's own
errors, a ``tojson`` that does not HTML-escape (with transformers' ``indent``, ``separators``,
``sort_keys`` and ``ensure_ascii``), ``strftime_now``, ``{% break %}`` and ``{% continue %}``,
``{% generation %}`` (rendered as its body), ``add_generation_prompt``, and the model's special
tokens (``bos_token``, ``eos_token``, ``unk_token``, ``pad_token``, ... from
``tokenizer_config.json`` or ``special_tokens_map.json``). ``tests/test_chat_templates.py``
checks the output against transformers for real models' templates.

Non-goals: tools and documents (``tools``/``documents`` are passed as None), named templates
(a list of templates in ``tokenizer_config.json``: the one named ``default`` is used), the
assistant-token mask that ``{% generation %}`` exists for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from specdec.core.errors import CheckpointError, InvalidRequest

TEMPLATE_FILE = "chat_template.jinja"
# The special tokens transformers hands a template (its ``special_tokens_map``).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _raise_exception(message: str) -> None:
    raise InvalidRequest("messages", f"the chat template refused them: {message}")


def _strftime_now(format_: str) -> str:
    return datetime.now().strftime(format_)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body (transformers marks it to
    build an assistant-token mask, which a server does not need)."""

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it a plain set)

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _special_tokens(folder: Path) -> dict[str, str]:
    """The special tokens set in the folder's tokenizer files (the config wins over the map)."""
    found: dict[str, str] = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / file
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        for name in SPECIAL_TOKEN_NAMES:
            value = config.get(name)
            if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                found[name] = value
    return found


def _config_template(folder: Path) -> str | None:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the special tokens it may write (name → text; an unset one
    stays undefined in the template, as in transformers)."""

    template: jinja2.Template
    special_tokens: dict[str, str]

    @classmethod
    def load(cls, model: str | Path, override: str | Path | None = None) -> ChatTemplate | None:
        """The template of model folder ``model`` (or the file ``override``); None: it has none."""
        folder = Path(model)
        if override is not None:
            if not Path(override).is_file():
                raise CheckpointError(f"--chat-template {override}: no such file")
            source: str | None = Path(override).read_text(encoding="utf-8")
        elif (folder / TEMPLATE_FILE).is_file():
            source = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
        else:
            source = _config_template(folder)
        if source is None:
            return None
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", _GenerationTag],
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise CheckpointError(f"chat template of {override or folder}: {exc}") from exc
        return cls(template, _special_tokens(folder))

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (dicts with at least role and content)."""
        try:
            return self.template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **self.special_tokens,
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:  # includes the sandbox's SecurityError
            raise InvalidRequest("messages", f"the chat template failed on them: {exc}") from exc
