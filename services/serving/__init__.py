"""gRPC plumbing all three services share, torch-free: server start and stop with health and
reflection (``server``), TLS credentials and a loopback CA (``tls``), API keys (``auth``), their
command-line flags (``security_args``), errors mapped to statuses (``errors``), tracing
(``telemetry``) and metrics (``metrics``).
"""
