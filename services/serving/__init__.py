"""gRPC plumbing all three services share, torch-free: server start and stop with health and
reflection (``server``), errors mapped to statuses (``errors``), tracing (``telemetry``) and
metrics (``metrics``).
"""
