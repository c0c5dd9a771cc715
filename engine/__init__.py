"""fim-lsp's inference engine: GPTBigCode checkpoints, per-document KV caches, decoding."""
