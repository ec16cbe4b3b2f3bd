"""The torch runtime shared by the draft and verifier services.

Model, checkpoint loading, KV cache, batched forward, sampling and speculative acceptance.
It imports torch, never grpc, redis or opentelemetry: the services wrap it.
"""
