"""The ``specdec generate`` client: one Generate call to a router, text streamed to the terminal.

Without ``--json`` it prints text as it arrives and a stats line on stderr; with ``--json`` it
prints one object with ``text``, ``token_ids`` and the stats, like the in-process command.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from specdec.router.request import DRAFT_METHOD_BY_NAME, POLICY_BY_NAME
from specdec.serving.security_args import router_channel
from specdec.v1 import common_pb2, generation_pb2, generation_pb2_grpc

FINISH = {
    generation_pb2.FINISH_REASON_EOS: "eos",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
}


def build_request(args: argparse.Namespace, prompt: str) -> generation_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
    if args.seed is not None:
        sampling.seed = args.seed
    policy = "fixed" if args.k is not None and args.policy is None else args.policy
    return generation_pb2.GenerateRequest(
        prompt_text=prompt,
        sampling=sampling,
        max_tokens=args.max_tokens,
        stop=args.stop,
        session_id=args.session,
        depth_policy=POLICY_BY_NAME[policy],
        fixed_depth=args.k if args.k is not None else 0,
        draft_method=DRAFT_METHOD_BY_NAME[args.draft_method],
        draft_ahead=args.draft_ahead,
    )


def stream_generate(args: argparse.Namespace, prompt: str) -> int:
    channel = router_channel(args.addr, args.tls_ca, args.api_key)
    stub = generation_pb2_grpc.GenerationStub(channel)
    text: list[str] = []
    token_ids: list[int] = []
    last = None
    try:
        for response in stub.Generate(build_request(args, prompt)):
            text.append(response.text)
            token_ids.extend(response.token_ids)
            if not args.json and response.text:
                print(response.text, end="", flush=True)
            last = response
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAVAILABLE and not token_ids:
            print(
                f"\nspecdec: no router at {args.addr} (start one with `make run`)", file=sys.stderr
            )
        else:
            print(f"\nspecdec: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    assert last is not None
    stats = MessageToDict(
        last.stats, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    finish = FINISH.get(last.finish_reason, "unknown")
    if args.json:
        print(
            json.dumps(
                {
                    "text": "".join(text),
                    "token_ids": token_ids,
                    "finish_reason": finish,
                    "stats": stats,
                }
            )
        )
    else:
        s = last.stats
        print(
            f"\n[{s.output_tokens} tokens in {s.total_ns / 1e9:.2f}s, {s.tokens_per_s:.1f} "
            f"tok/s, {s.rounds} rounds, accepted {s.accepted_tokens}/{s.draft_tokens} drafts, "
            f"ttft {s.time_to_first_token_ns / 1e6:.0f} ms"
            + (f" (queued {s.queue_ns / 1e6:.0f} ms)" if s.queue_ns else "")
            + f", finish: {finish}]",
            file=sys.stderr,
        )
    return 0
