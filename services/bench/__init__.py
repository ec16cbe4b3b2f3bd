"""``specdec bench``: speculative decoding measured side by side with what users would run instead.

One run measures everything its report shows: latency at batch 1 (the pipeline at k = 0, each
fixed k and each depth policy; the engine in-process; Hugging Face ``transformers`` greedy and
assisted generation), throughput and latency under concurrent load, acceptance, the efficiency
against Leviathan et al.'s prediction, and where a round's time goes.
Non-goals: sampling benchmarks (greedy only, so outputs can be checked token for token), GPUs
for the self-started pipeline (``local_pipeline`` runs on the CPU; point ``--addr`` at a router
on a GPU instead).
"""
