"""Continuous batching: a running decode batch that rows join and leave at every step.

`live` holds one row's decoding state, `kv` merges and slices transformers' KV caches,
`positions` gives each row its own next position (M-RoPE included), `step_sampler` draws each
row's token with its own parameters and step counter, `running` is the batch as a value
(prefill / concatenate / filter / step) and `scheduler` admits, decodes and retires rows.
"""
