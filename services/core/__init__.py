"""Torch-free pieces every role shares: errors, the tokenizer, the model's config, limits, and
the speculation loop with its one round record. The router imports only this and the network
plumbing; the engine imports this and torch.
"""
