"""What the prompt core costs per keystroke on a 5,000-line file, and how often the prompt's head moves.

Types 200 characters at the end and in the middle of a synthetic 5,000-line Python file and times
each step the server runs per keystroke (position conversion, cursor split, prompt window,
neighbour snippets, post-processing), with the checkpoint kit's StarCoder-family tokenizer.
Run: `python -m benchmarks.prompt_core` (prints a table; no model is loaded).
"""
from __future__ import annotations

import statistics
import sys
import time

TYPED = (
    "    def refresh(self, entries):\n"
    "        for entry in entries:\n"
    "            if entry.expired():\n"
    "                self.cache.pop(entry.key, None)\n"
    "        return len(self.cache)\n"
    "\n"
    "    def size(self):\n"
    "        return len(self.cache)\n"
)[:200]


def synthetic_file(lines: int = 5000) -> str:
    """A Python file of `lines` lines: classes of small methods."""
    out: list[str] = []
    i = 0
    while len(out) < lines:
        out += [f"class Store{i}:", f"    def get_{i}(self, key):", f"        return self.data.get(key, {i})", ""]
        i += 1
    return "\n".join(out[:lines]) + "\n"


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"{statistics.median(ordered) * 1e3:7.2f} {ordered[int(len(ordered) * 0.95)] * 1e3:7.2f}"


def main(argv: list[str] | None = None) -> int:
    from tokenizers import Tokenizer

    from fim_lsp.training.checkpoint_kit import CheckpointSpec, ensure_checkpoint
    from engine.fim import fim_tokens_from_vocab
    from lsp_server.core.context import cursor_context, offset_to_position
    from lsp_server.core.neighbours import select_snippets, text_around_cursor
    from lsp_server.core.postprocess import PostprocessConfig, postprocess
    from lsp_server.core.prompt import PromptConfig, build_prompt, memoize_counts

    tokenizer = Tokenizer.from_file(str(ensure_checkpoint(CheckpointSpec(shape="tiny")) / "tokenizer.json"))
    fim = fim_tokens_from_vocab(tokenizer.get_vocab())
    document = synthetic_file()
    others = [("store_a.py", synthetic_file(400)), ("store_b.py", synthetic_file(800))]
    print("per keystroke, 200 keys typed into a 5,000-line file; times in ms (median, p95)")
    print(f"{'where':7} {'n_ctx':>5} | {'position':>15} | {'prompt':>15} | {'snippets':>15} | "
          f"{'postprocess':>15} | {'tokenizer calls':>15} | head moves")
    for where in ("end", "middle"):
        cut = len(document) if where == "end" else document.index("class Store600:")
        for n_ctx in (512, 2048, 8192):
            counter = memoize_counts(lambda text: len(tokenizer.encode(text).ids))
            times: dict[str, list[float]] = {"position": [], "prompt": [], "snippets": [], "post": []}
            previous_text, moves, snippets = None, 0, []
            for typed in range(1, len(TYPED) + 1):
                text = document[:cut] + TYPED[:typed] + document[cut:]
                line, character = offset_to_position(text, cut + typed)
                t0 = time.perf_counter()
                ctx = cursor_context(text, line, character)
                t1 = time.perf_counter()
                snippets = select_snippets(text_around_cursor(ctx), others, 256, counter, previous=snippets)
                t2 = time.perf_counter()
                prompt = build_prompt(ctx, fim, counter, n_ctx, PromptConfig(), path="store.py", snippets=snippets)
                t3 = time.perf_counter()
                postprocess("self.cache = {}\n        return self\n", ctx, PostprocessConfig(), fim.stop_tokens())
                t4 = time.perf_counter()
                for key, value in zip(times, (t1 - t0, t3 - t2, t2 - t1, t4 - t3)):
                    times[key].append(value)
                if previous_text is not None and not prompt.text.startswith(previous_text):
                    moves += 1
                previous_text = prompt.text
            print(f"{where:7} {n_ctx:5} | {_ms(times['position'])} | {_ms(times['prompt'])} | "
                  f"{_ms(times['snippets'])} | {_ms(times['post'])} | {counter.calls:15} | {moves:10}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
