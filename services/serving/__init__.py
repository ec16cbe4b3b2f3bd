"""What the three services share: gRPC server plumbing, error mapping, the batch loop.

``server`` and ``errors`` import no torch (the router uses them); ``batch_loop`` is plain
threading; ``convert`` (protobuf ↔ engine types) imports torch and is for draft and verifier.
"""
