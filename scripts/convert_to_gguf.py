"""Convert a GPTBigCode checkpoint (e.g. a checkpoint-kit model) to GGUF for a llama.cpp server.

The conversion lives in `benchmarks.gguf` (llama.cpp's own converter, with locally trained
tokenizers mapped to the pre-tokenizer they use); this is its command line.

    python scripts/convert_to_gguf.py fetch                  # once: llama-cpp-python's sdist via pip
    python scripts/convert_to_gguf.py convert CKPT_DIR OUT.gguf [--outtype f32]

`fetch` keeps the sdist in ~/.cache/fim-lsp/llama-cpp-python/ (install the server from that same
file: `pip install "$(python scripts/convert_to_gguf.py sdist)[server]"`).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks.gguf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
