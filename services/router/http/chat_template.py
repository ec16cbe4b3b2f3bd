"""The model's chat template: Jinja2 (sandboxed) turning chat messages into one prompt text.

Where the template comes from, first found wins: a file given with ``--chat-template``; the
model folder's ``chat_template.jinja``; the ``chat_template`` string of its
``tokenizer_config.json``. It renders like Hugging Face's ``apply_chat_template``: an immutable
sandbox with ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` for the template's own
errors, a ``tojson`` that does not HTML-escape, ``strftime_now``, ``{% break %}`` and
``{% continue %}``, ``add_generation_prompt``, and the model's ``bos_token`` / ``eos_token``
(from ``tokenizer_config.json`` or ``special_tokens_map.json``).

Non-goals: tools and documents (``tools``/``documents`` are passed as None), named templates
(a list of templates in ``tokenizer_config.json``: the one named ``default`` is used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from specdec.core.errors import CheckpointError, InvalidRequest

TEMPLATE_FILE = "chat_template.jinja"


def _raise_exception(message: str) -> None:
    raise InvalidRequest("messages", f"the chat template refused them: {message}")


def _strftime_now(format_: str) -> str:
    return datetime.now().strftime(format_)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _special_token(folder: Path, name: str) -> str:
    """``name`` (bos_token, eos_token) from the folder's tokenizer files; "" when unset."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / file
        if not path.is_file():
            continue
        value = json.loads(path.read_text(encoding="utf-8")).get(name)
        if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str):
            return value
    return ""


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
    """A compiled chat template and the special tokens it may write."""

    template: jinja2.Template
    bos_token: str
    eos_token: str

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
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise CheckpointError(f"chat template of {override or folder}: {exc}") from exc
        return cls(
            template, _special_token(folder, "bos_token"), _special_token(folder, "eos_token")
        )

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (dicts with at least role and content)."""
        try:
            return self.template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=None,
                documents=None,
            )
        except InvalidRequest:
            raise
        except jinja2.TemplateError as exc:  # includes the sandbox's SecurityError
            raise InvalidRequest("messages", f"the chat template failed on them: {exc}") from exc
