"""specdec: speculative decoding for large language models, served as a gRPC pipeline.

Subpackages: ``engine`` (torch runtime), ``draft``, ``verifier`` and ``router`` (the services).
"""

__version__ = "0.1.0"
