"""The router: the public gRPC API and the speculation loop (see issue: pipeline). No torch here."""
