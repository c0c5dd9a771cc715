"""The reference backend: transformers' `generate()` on the whole prompt, no cache reuse.

This is what model cards show and what users get from a naive server; the keystroke benchmark
runs it beside our cached engine, and tests use it as the ground truth for greedy tokens.
"""
from __future__ import annotations

import time
from pathlib import Path

from engine.api import (BackendInfo, CancelToken, Cancelled, CompletionRequest, CompletionResult, DocId,
                        end_of_use)
from engine.tokenizer import CheckpointTokenizer


class ReferenceBackend:
    """`GPTBigCodeForCausalLM.generate` per request; every prompt token is prefilled every time."""

    ranks_first_token = False  # generate() has no way to force a first token's rank
    searches_lines = False  # nor to stop a beam at a line's end

    def __init__(self, model, tokenizer: CheckpointTokenizer, info: BackendInfo) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fim = tokenizer.fim
        self.info = info

    @classmethod
    def load(cls, path: str | Path, dtype: str = "float32") -> "ReferenceBackend":
        """Load a `gpt_bigcode` checkpoint directory with transformers on the CPU."""
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        model.eval()
        info = BackendInfo(backend="reference", model=str(path), device="cpu", dtype=dtype,
                           n_ctx=model.config.n_positions, why="transformers generate(), no cache reuse")
        return cls(model, CheckpointTokenizer.from_dir(path), info)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        start = time.perf_counter()
        ids = self.tokenizer.encode(request.prompt)
        stop_ids = self.tokenizer.stop_ids()

        class _Stop(StoppingCriteria):
            """Ends generation on cancel, time budget, or a stop string in the decoded text."""

            def __init__(self, backend: "ReferenceBackend") -> None:
                self.backend = backend
                self.reason = None

            def __call__(self, input_ids, scores, **kwargs):
                if cancel is not None and cancel.cancelled:
                    self.reason = "cancelled"
                elif request.time_budget_s is not None and time.perf_counter() - start > request.time_budget_s:
                    self.reason = "time_budget"
                elif (request.stop_strings or request.stop_at_line_end or request.stop_at_dedent is not None
                      or request.stop_at_loop):
                    text = self.backend.tokenizer.decode(input_ids[0, len(ids):].tolist())
                    if any(s in text for s in request.stop_strings):
                        self.reason = "stop_string"
                    elif (end := end_of_use(request, text)) is not None:
                        self.reason = end[1]
                return torch.tensor([self.reason is not None])

        stop = _Stop(self)
        sampling = request.temperature > 0
        if request.seed is not None:
            torch.manual_seed(request.seed)
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=request.max_new_tokens, do_sample=sampling,
                temperature=request.temperature if sampling else None, top_p=request.top_p if sampling else None,
                eos_token_id=sorted(stop_ids), pad_token_id=self.tokenizer.eod_id,
                stopping_criteria=StoppingCriteriaList([stop]),
            )
        if stop.reason == "cancelled":
            raise Cancelled(request.doc_id)
        new = out[0, len(ids):].tolist()
        reason = stop.reason
        if new and new[-1] in stop_ids:
            new, reason = new[:-1], "eos" if new[-1] == self.tokenizer.eod_id else "stop_token"
        text = self.tokenizer.decode(new)
        if reason == "stop_string":
            cut = min(text.index(s) for s in request.stop_strings if s in text)
            text = text[:cut]
        elif reason in ("line_end", "block_end", "loop"):
            text = text[:end_of_use(request, text)[0]]
        return CompletionResult(
            text=text, token_ids=new, stop_reason=reason or "max_tokens", prompt_tokens=len(ids),
            reused_tokens=0, prefill_tokens=len(ids), generated_tokens=len(new),
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    def drop(self, doc_id: DocId) -> None:
        """Nothing is cached per document."""

    def cache_stats(self) -> dict[str, int]:
        return {"slots": 0, "bytes": 0}


def load_backend(model: str | None = None, dtype: str = "auto", **_placement) -> ReferenceBackend:
    """The registry's entry (`engine.backends.load("reference")`): transformers on the CPU, fp32 by default."""
    from engine.select import resolve_model_name

    return ReferenceBackend.load(resolve_model_name(model), "float32" if dtype == "auto" else dtype)
