"""Tiny random-weight models of the VLM families people deploy, built offline.

Each family module returns the pieces of one model folder (config, processor or tokenizer)
shrunk to a few layers and tiny widths but structurally faithful: the family's vision tower,
special tokens, chat format and processor class. `build.ensure_family_model` saves them in the
standard Hugging Face layout, so the worker loads them exactly as it loads a real checkpoint.
"""
