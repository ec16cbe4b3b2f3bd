"""HTTP-face mode: what the OpenAI-compatible HTTP API adds over the gRPC API, per streamed chunk.

The same router serves both faces. At batch 1, each prompt goes through gRPC ``Generate``
(streamed) and through ``POST /v1/completions`` with ``stream: true`` (the prompt as token ids,
greedy, the same max tokens and fixed depth), the two taking turns (which goes first alternates
from request to request) so that drift of a shared machine lands on both alike. Per request:
each face's client wall time from sending to its last chunk (``data: [DONE]`` for HTTP), its
number of chunks (stream messages: gRPC responses, SSE events before ``[DONE]``), the added ms
per chunk = (HTTP − gRPC) ÷ HTTP chunks (its median and p90 over requests, and pooled: the
summed differences ÷ the summed chunks, steadier on a noisy machine), and whether the texts
(the router's detokenized ``text`` of each face, joined) are identical. The HTTP client is the
standard library's ``http.client`` on one kept-alive connection (as the gRPC client keeps one
channel), reading the Server-Sent Events line by line.
Non-goals: chat (its template renders once per request, not per chunk), concurrency, TLS.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from specdec.bench.stats import percentile
from specdec.bench.systems import pin_client, pipeline_request, request_id
from specdec.bench.workloads import Prompt
from specdec.v1 import generation_pb2, generation_pb2_grpc

TARGET_MS_PER_CHUNK = 1.0  # the bar: the HTTP face adds at most this per chunk
KEY_ENV = "SPECDEC_API_KEY"


@dataclass
class FaceRun:
    """One streamed request through one face."""

    elapsed_s: float  # send to last chunk, on the client
    chunks: int  # stream messages
    text: str


def grpc_run(
    stub: generation_pb2_grpc.GenerationStub,
    ids: Sequence[int],
    max_tokens: int,
    k: int,
    rid: str,
) -> FaceRun:
    req = generation_pb2.GenerateRequest(
        prompt_token_ids=generation_pb2.TokenIds(ids=ids),
        max_tokens=max_tokens,
        request_id=rid,
        **pipeline_request(k, None),
    )
    pieces: list[str] = []
    start = time.perf_counter()
    for response in stub.Generate(req):
        pieces.append(response.text)
    elapsed = time.perf_counter() - start
    return FaceRun(elapsed, len(pieces), "".join(pieces))


class HttpClient:
    """``/v1/completions`` streamed over one kept-alive connection."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=120)
        key = os.environ.get(KEY_ENV)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def run(self, ids: Sequence[int], max_tokens: int, k: int) -> FaceRun:
        body = json.dumps(
            {
                "prompt": list(ids),
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "specdec": {"depth_policy": "fixed", "k": k} if k else {"draft_method": "none"},
            }
        )
        pieces: list[str] = []
        start = time.perf_counter()
        self.connection.request("POST", "/v1/completions", body, self.headers)
        response = self.connection.getresponse()
        if response.status != 200:
            detail = response.read().decode("utf-8", "replace")
            raise RuntimeError(f"/v1/completions answered {response.status}: {detail}")
        while True:
            line = response.readline()
            if not line:
                raise RuntimeError("/v1/completions: the stream ended without data: [DONE]")
            if not line.startswith(b"data: "):
                continue  # the blank line that ends each event
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            choices = json.loads(data)["choices"]
            pieces += [c["text"] for c in choices]
        elapsed = time.perf_counter() - start
        response.read()  # the end of the chunked body, so the connection can be reused
        return FaceRun(elapsed, len(pieces), "".join(pieces))

    def close(self) -> None:
        self.connection.close()


def run_http_face(
    stub: generation_pb2_grpc.GenerationStub,
    http_address: str,
    prompts: Sequence[tuple[Prompt, list[int]]],
    max_tokens: int,
    k: int,
    repeats: int,
    cpus: frozenset[int] | None,
    tick: Callable[[str], None] = lambda _name: None,
) -> dict[str, Any]:
    """Both faces on every prompt ``repeats`` times, after one warm-up request each."""
    client = HttpClient(http_address)
    pin_client(cpus)
    try:

        def grpc_face(ids: Sequence[int], rid: str) -> FaceRun:
            return grpc_run(stub, ids, max_tokens, k, rid)

        def http_face(ids: Sequence[int], _rid: str) -> FaceRun:
            return client.run(ids, max_tokens, k)

        first = prompts[0][1]
        grpc_face(first, request_id("http-face-warmup", "grpc"))
        http_face(first, "")
        rows = []
        for rep in range(repeats):
            for i, (prompt, ids) in enumerate(prompts):
                rid = request_id("http-face", "grpc", prompt.id, rep)
                if (rep * len(prompts) + i) % 2:
                    h = http_face(ids, rid)
                    g = grpc_face(ids, rid)
                else:
                    g = grpc_face(ids, rid)
                    h = http_face(ids, rid)
                rows.append(_row(prompt.id, rep, g, h))
                tick("http-face")
    finally:
        client.close()
        pin_client(None)
    return summarize(rows, http_address, max_tokens, k)


def _row(prompt_id: str, rep: int, g: FaceRun, h: FaceRun) -> dict[str, Any]:
    return {
        "prompt": prompt_id,
        "pass": rep,
        "grpc_s": g.elapsed_s,
        "http_s": h.elapsed_s,
        "grpc_chunks": g.chunks,
        "http_chunks": h.chunks,
        "added_ms_per_chunk": 1e3 * (h.elapsed_s - g.elapsed_s) / max(h.chunks, 1),
        "identical": g.text == h.text,
    }


def summarize(
    rows: list[dict[str, Any]], http_address: str, max_tokens: int, k: int
) -> dict[str, Any]:
    added = [r["added_ms_per_chunk"] for r in rows]
    extra_s = sum(r["http_s"] - r["grpc_s"] for r in rows)
    return {
        "http_address": http_address,
        "endpoint": "/v1/completions (stream: true)",
        "max_tokens": max_tokens,
        "k": k,
        "requests": rows,
        "grpc_median_s": statistics.median(r["grpc_s"] for r in rows),
        "http_median_s": statistics.median(r["http_s"] for r in rows),
        "added_ms_per_chunk_median": statistics.median(added),
        "added_ms_per_chunk_p90": percentile(added, 0.9),
        "added_ms_per_chunk_pooled": 1e3 * extra_s / max(sum(r["http_chunks"] for r in rows), 1),
        "target_ms_per_chunk": TARGET_MS_PER_CHUNK,
        "all_identical": all(r["identical"] for r in rows),
    }
