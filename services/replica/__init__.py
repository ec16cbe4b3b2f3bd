"""What the two replica services (draft and verifier) share, with torch: the model loop that
runs batched forwards on the event loop (``scheduler``), the stream protocol both internal
streams follow (``stream``), protobuf ↔ engine conversion with validation (``convert``), and
start-up (``app``: load, warm up, serve). The router never imports this package.
"""
