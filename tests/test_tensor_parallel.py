"""Tensor parallelism over two gloo ranks on this CPU: sharding, loading, logits, the service.

The logit tests start a real group: rank 1 is a spawned process (``launch.start_leader``), rank
0 is this test process. Each case compares the TP = 2 logits with the single-device engine and
with ``transformers`` (fp32, 1e-4) for a prefill, token-by-token decoding, k+1 verify chunks
batched over several slots at different positions, and rollback then overwrite against a clean
slot: the gathered logits mix every rank's heads, so they match only if every rank's cache does.
Non-goals: NCCL (the same code on GPUs; ``benchmarks/tp_step.py`` runs there when one is lent).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures import TINY, save_random_model

from specdec.core.model_config import load_config
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.engine.tp.launch import Leader, TPSpec, start_leader
from specdec.engine.tp.loading import load_tp_model
from specdec.engine.tp.ranks import decode, encode
from specdec.engine.tp.sharding import ShardingError, plan
from specdec.router.redis_server import free_loopback_port
from tests.fixtures import UpConsole, run_up

HF_TOL = 1e-4
SEQ_LEN = 48

# case id → (model_type, overrides). TINY: 4 query heads, 2 KV heads, vocab 320.
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa": ("llama", {}),
    # one KV head for two ranks (replicated), biases on o and down (rank 0 adds them), tied
    # embeddings and a vocabulary that does not split evenly (the last shard is padded)
    "llama-mqa-bias-tied-321": (
        "llama",
        {
            "num_key_value_heads": 1,
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
            "vocab_size": 321,
        },
    ),
    # Llama-3's grouping (8 KV heads, groups of 2 here): 4 KV heads per rank
    "llama-8kv": (
        "llama",
        {"num_attention_heads": 16, "num_key_value_heads": 8, "hidden_size": 128},
    ),
    "qwen2": ("qwen2", {}),  # bias on q/k/v
    "qwen3": ("qwen3", {"head_dim": 32}),  # q/k norm, head_dim x heads != hidden
}


def random_ids(n: int, seed: int, vocab: int = TINY["vocab_size"]) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --- sharding: pure functions ---------------------------------------------------------------------


def _cfg(**overrides: Any) -> Any:
    from specdec.core.model_config import ModelConfig

    base = dict(TINY, model_type="llama", head_dim=16)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.mark.unit
def test_plan_splits_heads_rows_and_vocabulary() -> None:
    cfg = _cfg(num_attention_heads=8, num_key_value_heads=4, vocab_size=10, intermediate_size=64)
    shards = [plan(cfg, 4, r) for r in range(4)]
    assert [(s.q_heads.start, s.q_heads.size) for s in shards] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert [(s.kv_heads.start, s.kv_heads.size) for s in shards] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert [(s.intermediate.start, s.intermediate.stop) for s in shards][-1] == (48, 64)
    assert [(s.vocab.start, s.vocab.stop) for s in shards] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert {s.vocab_padded for s in shards} == {3}


@pytest.mark.unit
def test_plan_replicates_kv_heads_when_fewer_than_ranks() -> None:
    cfg = _cfg(num_attention_heads=8, num_key_value_heads=2)  # groups of 4 query heads
    shards = [plan(cfg, 8, r) for r in range(8)]
    # each rank's one query head reads KV head q // 4: ranks 0-3 keep head 0, ranks 4-7 head 1
    assert [s.kv_heads.start for s in shards] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {s.kv_heads.size for s in shards} == {1}


@pytest.mark.unit
@pytest.mark.parametrize(
    "overrides, world, words",
    [
        ({"num_attention_heads": 6, "num_key_value_heads": 6}, 4, "num_attention_heads (6)"),
        ({"num_attention_heads": 12, "num_key_value_heads": 3}, 4, "num_key_value_heads (3)"),
        (
            {"intermediate_size": 100, "num_attention_heads": 8, "num_key_value_heads": 8},
            8,
            "intermediate_size (100)",
        ),
    ],
)
def test_plan_refuses_what_does_not_divide(overrides: dict, world: int, words: str) -> None:
    with pytest.raises(ShardingError, match=re.escape(words)):
        plan(_cfg(**overrides), world, 0)


@pytest.mark.unit
def test_step_message_round_trips() -> None:
    chunks = [Chunk(3, [5, 6, 7], 10, 3), Chunk(0, [1], 0, 0), Chunk(7, list(range(20)), 4, 1)]
    assert decode(encode(chunks)) == chunks


# --- logits over two ranks ------------------------------------------------------------------------


@dataclass
class Case:
    folder: Path
    leader: Leader
    single: Any  # the single-device DecoderModel
    ids: list[int]
    ref: torch.Tensor  # [SEQ_LEN, V] transformers' logits
    vocab: int


def _leader(folder: Path, slots: int = 4) -> Leader:
    spec = TPSpec(
        str(folder),
        local_ranks=2,
        devices=("cpu", "cpu"),
        dtype=torch.float32,
        num_slots=slots,
        max_seq_len=128,
        cpu_sets=((0,), (1,)) if len(os.sched_getaffinity(0)) >= 2 else (),
    )
    return start_leader(spec)


@pytest.fixture(scope="class", params=list(ARCHS))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Case]:
    from transformers import AutoModelForCausalLM

    model_type, overrides = ARCHS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    save_random_model(folder, model_type, seed=7, tokenizer=False, **overrides)
    vocab = overrides.get("vocab_size", TINY["vocab_size"])
    ids = random_ids(SEQ_LEN, seed=11, vocab=vocab)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    leader = _leader(folder)
    try:
        yield Case(folder, leader, load_model(folder), ids, ref, vocab)
    finally:
        leader.close()
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)


def _fresh(case: Case) -> tuple[ModelRunner, ModelRunner]:
    """The TP runner with every slot freed, and a single-device runner of the same shape."""
    tp = case.leader.runner
    for slot in list(tp.cache._in_use):
        tp.cache.free(slot)
    return tp, ModelRunner(case.single, num_slots=tp.cache.num_slots, max_seq_len=128)


class TestTwoRanks:
    """One group per architecture (the fixture is class-scoped: its last group is gone before
    the tests after this class start their own)."""

    def test_prefill_and_decode_match_single_device_and_transformers(self, case: Case) -> None:
        tp, one = _fresh(case)
        for runner in (tp, one):
            slot = runner.cache.allocate()
            logits = runner.step([Chunk(slot, case.ids[:40], 0, num_logits=40)])[0]
            assert max_diff(logits, case.ref[:40]) <= HF_TOL
            for pos in range(40, SEQ_LEN):
                logits = runner.step([Chunk(slot, [case.ids[pos]], pos, num_logits=1)])[0]
                assert max_diff(logits, case.ref[pos : pos + 1]) <= HF_TOL, f"position {pos}"

    def test_batched_verify_chunks_at_several_slots_and_positions(self, case: Case) -> None:
        """A prefill, two k+1 = 5 verifies and a decode in one step, each slot at its own place."""
        tp, one = _fresh(case)
        seqs = [random_ids(60, seed=s, vocab=case.vocab) for s in (1, 2, 3, 4)]
        starts = [0, 17, 33, 50]
        outs = []
        for runner in (tp, one):
            slots = [runner.cache.allocate() for _ in seqs]
            runner.step(
                [Chunk(s, q[:n], 0, 0) for s, q, n in zip(slots, seqs, starts, strict=True) if n]
            )
            outs.append(
                runner.step(
                    [
                        Chunk(slots[0], seqs[0][:12], 0, 12),
                        Chunk(slots[1], seqs[1][17:22], 17, 5),
                        Chunk(slots[2], seqs[2][33:38], 33, 5),
                        Chunk(slots[3], seqs[3][50:51], 50, 1),
                    ]
                )
            )
        for b, (got, want) in enumerate(zip(*outs, strict=True)):
            assert max_diff(got, want) <= HF_TOL, f"chunk {b}"

    def test_rollback_then_overwrite_equals_a_clean_slot(self, case: Case) -> None:
        tp, _ = _fresh(case)
        ids = case.ids
        dirty, clean = tp.cache.allocate(), tp.cache.allocate()
        tp.step([Chunk(dirty, ids[:30], 0, 0)])
        wrong = random_ids(5, seed=99, vocab=case.vocab)
        tp.step([Chunk(dirty, wrong, 30, 5)])  # rejected drafts
        tp.cache.rollback_to(dirty, 30)
        got = tp.step([Chunk(dirty, ids[30:35], 30, 5)])[0]
        want = tp.step([Chunk(clean, ids[:35], 0, 5)])[0]
        assert max_diff(got, want) <= 1e-5
        assert max_diff(got, case.ref[30:35]) <= HF_TOL

    def test_a_bad_step_is_refused_on_rank_0_and_the_group_goes_on(self, case: Case) -> None:
        from specdec.core.errors import InvalidRequest

        tp, _ = _fresh(case)
        slot = tp.cache.allocate()
        with pytest.raises(InvalidRequest):
            tp.step([Chunk(slot, [case.vocab + 5], 0, 1)])
        logits = tp.step([Chunk(slot, case.ids[:8], 0, 8)])[0]
        assert max_diff(logits, case.ref[:8]) <= HF_TOL


# --- sharded loading ------------------------------------------------------------------------------


@pytest.mark.unit
def test_each_rank_loads_its_slices_of_a_sharded_checkpoint(tmp_path: Path) -> None:
    """Through ``model.safetensors.index.json`` over several files, rank r's tensors are the
    single-device model's rows or columns of rank r; biases of o and down live on rank 0."""
    folder = save_random_model(
        tmp_path / "m", "llama", seed=3, tokenizer=False, attention_bias=True, mlp_bias=True
    )
    sharded = tmp_path / "sharded"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(sharded, max_shard_size="60KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    full = load_model(folder).state_dict()
    d = 16  # TINY head_dim
    for rank in (0, 1):
        state = load_tp_model(sharded, 2, rank).local.state_dict()
        attn, mlp = "model.layers.1.self_attn", "model.layers.1.mlp"
        q_rows = slice(rank * 2 * d, (rank + 1) * 2 * d)  # 2 query heads per rank
        kv_rows = slice(rank * d, (rank + 1) * d)  # 1 KV head per rank
        i_rows = slice(rank * 64, (rank + 1) * 64)
        assert torch.equal(state[f"{attn}.q_proj.weight"], full[f"{attn}.q_proj.weight"][q_rows])
        assert torch.equal(state[f"{attn}.v_proj.bias"], full[f"{attn}.v_proj.bias"][kv_rows])
        assert torch.equal(state[f"{attn}.o_proj.weight"], full[f"{attn}.o_proj.weight"][:, q_rows])
        assert torch.equal(state[f"{mlp}.up_proj.weight"], full[f"{mlp}.up_proj.weight"][i_rows])
        assert torch.equal(
            state[f"{mlp}.down_proj.weight"], full[f"{mlp}.down_proj.weight"][:, i_rows]
        )
        bias = state[f"{mlp}.down_proj.bias"]
        assert torch.equal(bias, full[f"{mlp}.down_proj.bias"] if rank == 0 else 0 * bias)
        assert torch.equal(
            state["lm_head.weight"], full["lm_head.weight"][rank * 160 : (rank + 1) * 160]
        )


@pytest.mark.unit
def test_loading_refuses_a_split_that_does_not_divide(tmp_path: Path) -> None:
    folder = save_random_model(tmp_path / "m", "llama", seed=3, tokenizer=False)
    with pytest.raises(ShardingError, match=r"num_attention_heads \(4\).*--tensor-parallel 3"):
        load_tp_model(folder, 3, 0)


_PEAK_SCRIPT = """
import json, sys, torch
from specdec.engine.checkpoint import load_model
from specdec.engine.tp.loading import load_tp_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

torch.set_num_threads(1)
from specdec.core.model_config import load_config
from specdec.engine.model import DecoderModel
with torch.device("meta"):  # torch's one-time start-up costs (tens of MB), paid before measuring
    DecoderModel(load_config(sys.argv[1]))
open("/proc/self/clear_refs", "w").write("5")  # start the peak (VmHWM) afresh
before = status("VmRSS")
folder, world, rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if world == 1:
    model = load_model(folder)
else:
    model = load_tp_model(folder, world, rank).local
held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"peak": status("VmHWM") - before, "held": held}))
"""


def _peak(folder: Path, world: int, rank: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(folder), str(world), str(rank)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_rank_peaks_at_about_half_the_single_device_memory(tmp_path: Path) -> None:
    """A ~100 MB fp32 checkpoint in two files: each rank's peak RSS growth while loading (the
    reads, fusing, oneDNN packing) is at most 0.6x the single-device load's."""
    folder = save_random_model(
        tmp_path / "m",
        "llama",
        seed=0,
        tokenizer=False,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=8192,
    )
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(sharded, max_shard_size="60MB")
    single = _peak(sharded, 1, 0)
    ranks = [_peak(sharded, 2, r) for r in (0, 1)]
    print(
        "peak RSS growth while loading, MB:", single["peak"] >> 20, [r["peak"] >> 20 for r in ranks]
    )
    for r in ranks:
        assert r["held"] <= 0.52 * single["held"]
        assert r["peak"] <= 0.6 * single["peak"], (r, single)


# --- the pipeline with a TP = 2 verifier ----------------------------------------------------------

PROMPTS = [[5, 17, 42, 99, 7], [200, 3, 3, 150], [1, 2, 3, 4, 5, 6, 7, 8]]
MAX_TOKENS = 24


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class TPUp(UpConsole):
    """``specdec up --tensor-parallel 2`` with its verifier's ranks at hand."""

    def verifier(self) -> int:
        pids = [p for p in _children(self.process.pid) if b"serve\0verifier" in _cmdline(p)]
        assert len(pids) == 1, pids
        return pids[0]

    def ranks(self) -> list[int]:
        """The verifier's spawned rank processes."""
        return [p for p in _children(self.verifier()) if b"spawn_main" in _cmdline(p)]


@pytest.fixture(scope="module")
def tp_up(model_dir: Path) -> Iterator[TPUp]:
    yield from run_up(model_dir, TPUp, "--tensor-parallel", "2", "--no-http")


@pytest.fixture(scope="module")
def target_only(model_dir: Path) -> dict[int, list[int]]:
    """Each prompt's greedy continuation by the single-device target alone (no drafts)."""
    model = load_model(model_dir / "target")
    eos = set(model.config.eos_token_ids)
    runner = ModelRunner(model, num_slots=1, max_seq_len=128)
    out = {}
    for i, prompt in enumerate(PROMPTS):
        slot = runner.cache.allocate()
        logits = runner.step([Chunk(slot, prompt, 0, 1)])[0]
        tokens: list[int] = []
        while len(tokens) < MAX_TOKENS:
            token = int(logits[-1].argmax())
            if token in eos:
                break
            tokens.append(token)
            logits = runner.step([Chunk(slot, [token], len(prompt) + len(tokens) - 1, 1)])[0]
        runner.cache.free(slot)
        out[i] = tokens
    return out


def _generate(
    stub: Any, prompt: list[int], timeout_s: float = 60, seed: int | None = None
) -> list[int]:
    from specdec.v1 import common_pb2, generation_pb2

    fields: dict[str, Any] = {}
    if seed is not None:  # a fixed depth: the draws per round do not depend on timing
        fields = dict(
            sampling=common_pb2.SamplingParams(temperature=1.0, seed=seed),
            depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
            fixed_depth=3,
        )
    request = generation_pb2.GenerateRequest(
        prompt_token_ids=generation_pb2.TokenIds(ids=prompt), max_tokens=MAX_TOKENS, **fields
    )
    tokens: list[int] = []
    for response in stub.Generate(request, timeout=timeout_s):
        tokens += response.token_ids
    return tokens


@pytest.fixture(scope="module")
def stub(tp_up: TPUp) -> Iterator[Any]:
    import grpc

    from specdec.v1 import generation_pb2_grpc

    with grpc.insecure_channel(tp_up.address) as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


@pytest.mark.e2e
@pytest.mark.slow
def test_tp2_pipeline_greedy_output_equals_the_target_alone(tp_up, stub, target_only) -> None:
    assert len(tp_up.ranks()) == 1  # rank 1 beside the verifier process (rank 0)
    for i, prompt in enumerate(PROMPTS):
        assert _generate(stub, prompt) == target_only[i], f"prompt {i}"


@pytest.mark.e2e
@pytest.mark.slow
def test_tp2_seeded_sampling_is_reproducible(tp_up, stub) -> None:
    first = [_generate(stub, prompt, seed=11 + i) for i, prompt in enumerate(PROMPTS)]
    again = [_generate(stub, prompt, seed=11 + i) for i, prompt in enumerate(PROMPTS)]
    assert first == again
    assert [_generate(stub, PROMPTS[0], seed=12)] != first[:1]  # the seed matters


@pytest.mark.e2e
@pytest.mark.slow
def test_tp2_cancelled_streams_free_their_slots(tp_up, stub, target_only) -> None:
    """More cancelled requests than the verifier has slots (16), then clean greedy output: the
    slots came back, and what the cancelled ones left in both ranks' caches is overwritten."""
    from specdec.v1 import generation_pb2

    for n in range(20):
        request = generation_pb2.GenerateRequest(
            prompt_token_ids=generation_pb2.TokenIds(ids=PROMPTS[n % 3]), max_tokens=MAX_TOKENS
        )
        call = stub.Generate(request, timeout=60)
        next(call)  # the first tokens are out: the sequence holds a slot on the verifier
        call.cancel()
    for i, prompt in enumerate(PROMPTS):
        assert _generate(stub, prompt) == target_only[i], f"prompt {i}"


@pytest.mark.e2e
@pytest.mark.slow
def test_tp2_kill_9_of_a_rank_fails_clearly_and_the_replica_comes_back(
    tp_up, stub, target_only
) -> None:
    import grpc

    rank = tp_up.ranks()[0]
    verifier = tp_up.verifier()
    seen = len(tp_up.lines)
    errors: list[grpc.RpcError] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            try:
                _generate(stub, PROMPTS[0], timeout_s=30)
            except grpc.RpcError as exc:
                errors.append(exc)
                time.sleep(0.1)

    clients = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in clients:
        t.start()
    time.sleep(1.0)
    os.kill(rank, signal.SIGKILL)
    killed = time.monotonic()
    tp_up.wait_line("the verifier exited (code 3)", 30, after=seen)
    exited_s = time.monotonic() - killed
    tp_up.wait_line("the verifier is back", 120, after=seen)
    done.set()
    for t in clients:
        t.join(timeout=60)
        assert not t.is_alive(), "a request hung"
    assert tp_up.verifier() != verifier and len(tp_up.ranks()) == 1
    for error in errors:  # failed over to nothing (one replica): UNAVAILABLE, never a hang
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert _generate(stub, PROMPTS[1]) == target_only[1]
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    print(f"verifier exited {exited_s:.1f} s after the rank's kill; {len(errors)} UNAVAILABLE")


@pytest.mark.unit
@pytest.mark.parametrize("arch", ["llama-mqa-bias-tied-321", "qwen3"])
def test_sizing_counts_the_bytes_a_rank_loads(arch: str, tmp_path: Path) -> None:
    from specdec.engine.tp.sizing import rank_size

    model_type, overrides = ARCHS[arch]
    folder = save_random_model(tmp_path / arch, model_type, seed=1, tokenizer=False, **overrides)
    cfg = load_config(folder)
    for world in (1, 2):
        local = load_tp_model(folder, world, 0).local
        held = {t.data_ptr(): t.numel() for t in local.state_dict().values()}  # tied: once
        assert rank_size(cfg, world, dtype_bytes=4).weight_bytes == 4 * sum(held.values())
        cache = local.new_cache(1, 10)
        per_token = (
            sum(k.nbytes + v.nbytes for k, v in zip(cache.keys, cache.values, strict=True)) // 10
        )
        assert rank_size(cfg, world, dtype_bytes=4).kv_bytes_per_token == per_token


@pytest.mark.service
def test_serve_refuses_a_split_that_does_not_divide_in_one_line(model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "specdec.cli", "serve", "verifier", "--device", "cpu"]
    cmd += ["--model", str(model_dir / "target"), "--listen", "127.0.0.1:0"]
    out = subprocess.run(
        [*cmd, "--tensor-parallel", "3"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "num_attention_heads (4) is not a multiple of --tensor-parallel 3" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_tp2_speculative_sampling_keeps_the_single_device_distribution(model_dir: Path) -> None:
    """Chi-square of the first three tokens sampled speculatively on a TP = 2 target against
    the exact marginals of plain sampling computed on one device."""
    from collections import Counter

    from exact import assert_matches, exact_marginals

    from specdec.engine.proposer_draft import DraftModelProposer
    from specdec.engine.sampling import SamplingParams
    from specdec.engine.speculative import generate

    prompt = PROMPTS[0]
    single = ModelRunner(load_model(model_dir / "target"), num_slots=1, max_seq_len=64)
    marginals = exact_marginals(single, prompt, SamplingParams(temperature=1.5, top_k=6), 3)
    draft = ModelRunner(load_model(model_dir / "draft_close"), num_slots=2, max_seq_len=64)
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    leader = _leader(model_dir / "target", slots=2)
    n, accepted = 400, 0
    counts: list[Counter[int]] = [Counter(), Counter(), Counter()]
    try:
        for seed in range(n):
            params = SamplingParams(temperature=1.5, top_k=6, seed=seed)
            proposer = DraftModelProposer(draft, top_m=4, top_mass=0.8)
            got = generate(leader.runner, prompt, params, 3, proposer, 1, stop_token_ids=[])
            accepted += got.stats.accepted_tokens
            for i in range(3):
                counts[i][got.token_ids[i]] += 1
    finally:
        leader.close()
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)
    assert accepted > n // 10  # the draft path really ran
    for count, exact in zip(counts, marginals, strict=True):
        assert_matches(count, exact, n)


@pytest.mark.e2e
@pytest.mark.slow
def test_two_nodes_on_loopback_serve_the_target_alone_output(
    model_dir: Path, target_only: dict[int, list[int]]
) -> None:
    """``--tp-nodes 2``: node 1 runs rank 1 only, node 0 rank 0 and gRPC, a router in front;
    greedy output equals the target alone; SIGTERM to node 0 ends node 1 too."""
    import grpc

    from specdec.v1 import generation_pb2_grpc

    target = str(model_dir / "target")
    master, verifier, router = (f"127.0.0.1:{free_loopback_port()}" for _ in range(3))
    serve = [sys.executable, "-m", "specdec.cli", "serve"]
    node = [*serve, "verifier", "--model", target, "--device", "cpu", "--tp-nodes", "2"]
    node += ["--tp-master", master]
    procs = [
        subprocess.Popen([*node, "--tp-node-rank", "1", "--listen", "127.0.0.1:1"]),
        subprocess.Popen([*node, "--tp-node-rank", "0", "--listen", verifier]),
        subprocess.Popen(
            [*serve, "router", "--model", target, "--verifiers", verifier, "--listen", router]
        ),
    ]
    try:
        with grpc.insecure_channel(router) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = generation_pb2_grpc.GenerationStub(channel)
            deadline = time.monotonic() + 90
            while True:  # the router serves once the verifier is SERVING
                try:
                    got = _generate(stub, PROMPTS[0])
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline
                    time.sleep(0.5)
            assert got == target_only[0]
            assert _generate(stub, PROMPTS[2]) == target_only[2]
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=30) == 0
        assert procs[0].wait(timeout=30) == 0  # rank 0 told it to stop
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.unit
def test_watchdog_reports_a_killed_rank_once_and_not_one_told_to_stop() -> None:
    import multiprocessing

    from specdec.engine.tp.launch import Watchdog

    ctx = multiprocessing.get_context("fork")
    stopped, killed = (
        ctx.Process(target=time.sleep, args=(0,)),
        ctx.Process(target=time.sleep, args=(30,)),
    )
    for proc in (stopped, killed):
        proc.start()
    reports: list[str] = []
    watchdog = Watchdog([stopped, killed], reports.append, poll_s=0.02)
    watchdog.start()
    stopped.join()
    time.sleep(0.2)
    assert reports == []  # exit code 0: told to stop
    os.kill(killed.pid, signal.SIGKILL)
    killed.join()
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    watchdog.stop()
    assert reports == [f"rank process {killed.pid} exited (code -9)"]
