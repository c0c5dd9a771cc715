"""The in-process PyTorch backend: our GPTBigCode forward with an exact per-document KV cache.

A request is tokenised, matched against its document's slot (and, through block hashes, against
other documents' slots), the slot's buffer is evicted/grown/seeded as the pure `SlotTable`
plans, and only the tokens the slot lacks are prefilled before decoding. Requests are serialised
by one lock: the model uses every core anyway, and the slot table is not shared-state safe.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
import xxhash

from engine.api import BackendInfo, CancelToken, Cancelled, CompletionRequest, CompletionResult, DocId
from engine.cache import CacheConfig, Plan, SlotTable, common_prefix
from engine.beam import beam_lines
from engine.generate import (Generation, Sampling, StopRules, check_prompt, cut_text, generate, prefill,
                             text_ends)
from engine.healing import Healing, healable
from engine.loading import LoadedModel, available_memory
from engine.model import KVBuffer

DEFAULT_BUDGET_SHARE = 0.3  # of the memory free after loading, when no budget is configured
REGION = "\n(previous cursor region)"  # appended to a document's id: the slot of the region the cursor left


def previous_region(doc_id: DocId) -> DocId:
    """The id of the second slot a document keeps (`CacheConfig.regions`); no URI holds a line break."""
    return DocId(doc_id + REGION)


def default_hash(data: bytes) -> int:
    """The block hash: xxh3, 64 bits."""
    return xxhash.xxh3_64_intdigest(data)


class TorchBackend:
    """`engine.api.Backend` over a loaded `Transformer`; one KV slot per document."""

    ranks_first_token = True  # honours CompletionRequest.first_token_rank (alternative suggestions)
    searches_lines = True  # honours CompletionRequest.beam (engine.beam; the ONNX runtime too)

    def __init__(self, loaded: LoadedModel, cache: CacheConfig | None = None, kv_dtype: torch.dtype | None = None,
                 model_name: str | None = None, why: str = "", prefill_chunk: int = 512,
                 hash_fn: Callable[[bytes], int] = default_hash, clock: Callable[[], float] = time.perf_counter,
                 speculate: int = 0):
        if speculate < 0:
            raise ValueError(f"speculate (draft tokens per greedy step) must be >= 0, got {speculate}")
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.fim = loaded.tokenizer.fim
        self.device = loaded.device
        self.kv_dtype = kv_dtype or loaded.dtype
        self.prefill_chunk = prefill_chunk
        self.speculate = speculate  # prompt-lookup draft tokens per greedy step; 0 = off
        self.clock = clock
        args = self.model.args
        self.info = BackendInfo(backend="torch", model=model_name or str(loaded.path), device=str(loaded.device),
                                dtype=str(loaded.dtype).removeprefix("torch."), n_ctx=args.n_positions, why=why,
                                params=args.param_count())
        config = cache or CacheConfig()
        per_token = args.kv_bytes_per_token(torch.empty((), dtype=self.kv_dtype).element_size())
        budget = config.budget_bytes or int(available_memory(self.device) * DEFAULT_BUDGET_SHARE)
        self.table = SlotTable(per_token, budget, args.n_positions, hash_fn, config)
        self.buffers: dict[DocId, KVBuffer] = {}
        self.stop_ids = loaded.tokenizer.stop_ids()
        self.emittable = loaded.tokenizer.tokenizer.get_vocab_size()  # rows past it are padding
        loaded.tokenizer.token_texts()  # healing's index, built now rather than at the first keystroke (~0.3 s at 49k)
        self.lock = threading.Lock()
        self.runs = 0  # requests that reached the model (a request cancelled while queued never does)
        self.forwards = 0  # model forwards that wrote K/V (prefill chunks, decode steps), warming included
        self.forwards_after_cancel = 0  # of those, begun after their request was cancelled (at most one each)
        self.prompt_tokens_computed = 0  # prompt tokens requests wrote K/V for (a cancelled one: up to its stop)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        start = self.clock()
        ids = self.tokenizer.encode(request.prompt)
        args = self.model.args
        check_prompt(ids, args.n_positions, args.vocab_size)
        if request.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {request.max_new_tokens}")
        if request.first_token_rank < 0:
            raise ValueError(f"first_token_rank must be >= 0, got {request.first_token_rank}")
        if request.beam < 1:
            raise ValueError(f"beam must be >= 1 (1: greedy), got {request.beam}")
        healing = self.healing_for(ids) if request.heal and request.max_new_tokens > 0 else None
        if healing is not None:
            ids = ids[:-1]  # its text is re-spelled by the first generated tokens
        decode = self.tokenizer.decode if healing is None else lambda toks: healing.strip(self.tokenizer.decode(toks))
        max_new = min(request.max_new_tokens, args.n_positions - len(ids))  # re-spelling is part of the budget
        beam = (request.beam > 1 and request.temperature <= 0 and request.stop_at_line_end and max_new > 0
                and self.searches_lines)
        deadline = start + request.time_budget_s if request.time_budget_s is not None else None
        rules = StopRules(max_new_tokens=max_new, stop_ids=self.stop_ids, eod_id=self.tokenizer.eod_id,
                          stop_strings=request.stop_strings, line_end=request.stop_at_line_end,
                          dedent=request.stop_at_dedent, loop=request.stop_at_loop, deadline=deadline,
                          emittable=self.emittable)
        sampling = Sampling(request.temperature, request.top_p, request.seed, request.first_token_rank)
        with self.lock:
            self.runs += 1
            self.set_aside(request.doc_id, ids)
            kv, plan = self.prepare_slot(request.doc_id, ids, len(ids) + max(max_new - 1, 0))
            written = self.recorder(request.doc_id, cancel, prompt_tokens=len(ids))

            try:
                if beam:
                    gens = beam_lines(self.model, kv, ids, plan.keep, rules, request.beam, written=written,
                                      decode=decode, new_buffer=self.new_buffer, cancel=cancel,
                                      prefill_chunk=self.prefill_chunk, clock=self.clock, healing=healing)
                else:
                    gens = [generate(self.model, kv, ids, plan.keep, rules, sampling, written=written,
                                     decode=decode, cancel=cancel, prefill_chunk=self.prefill_chunk,
                                     clock=self.clock, speculate=self.speculate, healing=healing)]
            except Cancelled:
                raise  # the slot holds exactly the tokens `written` reported
            except BaseException:  # a step failed midway (or the slot was corrupt): recompute it next time
                self.table.evict(request.doc_id)
                self.buffers.pop(request.doc_id, None)
                raise
        latency_ms = (self.clock() - start) * 1e3
        results = [self.result_of(gen, rules, decode, len(ids), plan, latency_ms, beam) for gen in gens]
        results[0].other_lines = results[1:]
        return results[0]

    def warm(self, request: CompletionRequest, max_tokens: int, cancel: CancelToken | None = None) -> tuple[int, int]:
        """Prefill, without decoding, up to `max_tokens` more of the prompt tokens `request` would
        prefill, into its document's slot: (tokens written now, tokens still to warm).

        The request itself, made later, then finds them cached and prefills only what changed since
        and its last prompt token (always recomputed for the logits that start decoding). Same
        tokenisation, healing and slot capacity as `complete`, so the slot ends as the request
        would leave it before decoding. Raises Cancelled when `cancel` fired before it began.
        """
        ids = self.tokenizer.encode(request.prompt)
        args = self.model.args
        check_prompt(ids, args.n_positions, args.vocab_size)
        healing = self.healing_for(ids) if request.heal and request.max_new_tokens > 0 else None
        if healing is not None:
            ids = ids[:-1]
        max_new = min(request.max_new_tokens, args.n_positions - len(ids))
        target = len(ids) - 1  # the last prompt token is the request's own
        with self.lock:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("cancelled before warming")
            self.set_aside(request.doc_id, ids)
            slot = self.table.slots.get(request.doc_id)
            have = min(common_prefix(slot.cached_tokens, ids), target) if slot is not None else 0
            if have >= target:
                return 0, 0
            end = min(target, have + max(max_tokens, 1))
            kv, plan = self.prepare_slot(request.doc_id, ids[:end + 1], len(ids) + max(max_new - 1, 0), warming=True)
            if plan.keep >= end:  # seeded from another slot
                return 0, target - plan.keep
            try:
                with torch.inference_mode():
                    prefill(self.model, kv, ids[plan.keep:end], plan.keep, self.prefill_chunk,
                            self.recorder(request.doc_id, cancel), None)  # one chunk: runs to its end
            except BaseException:  # the slot may be half written: recompute it next time
                self.table.evict(request.doc_id)
                self.buffers.pop(request.doc_id, None)
                raise
            return end - plan.keep, target - end

    def recorder(self, doc_id: DocId, cancel: CancelToken | None,
                 prompt_tokens: int = 0) -> Callable[[list[int]], None]:
        """The `written` callback of one run: records the K/V tokens in the slot table and counts the
        forward, and of a request's `prompt_tokens` those it computed (a warm counts its own)."""

        def written(part: list[int]) -> None:
            held = len(self.table.slots[doc_id].cached_tokens)
            self.prompt_tokens_computed += max(0, min(held + len(part), prompt_tokens) - held)
            self.table.append(doc_id, part)
            self.forwards += 1
            if cancel is not None and cancel.fired:
                self.forwards_after_cancel += 1

        return written

    def set_aside(self, doc_id: DocId, ids: list[int]) -> None:
        """Keep the cursor region the document leaves in its second slot, or swap back to it
        (`SlotTable.set_aside`); the buffers follow the table."""
        region = previous_region(doc_id)
        if self.table.set_aside(doc_id, region, ids):
            mine, theirs = self.buffers.pop(doc_id, None), self.buffers.pop(region, None)
            if mine is not None and region in self.table.slots:
                self.buffers[region] = mine
            if theirs is not None and doc_id in self.table.slots:
                self.buffers[doc_id] = theirs

    @staticmethod
    def result_of(gen: Generation, rules: StopRules, decode: Callable[[list[int]], str], prompt_tokens: int,
                  plan: Plan, latency_ms: float, searched: bool) -> CompletionResult:
        """The result a generation makes: its text cut where the request's rules end it, its costs, and
        its score when a beam search (`searched`) found it."""
        text = cut_text(decode(gen.tokens), gen.stop_reason, rules)
        return CompletionResult(
            text=text, token_ids=gen.tokens, stop_reason=gen.stop_reason, prompt_tokens=prompt_tokens,
            reused_tokens=plan.keep, prefill_tokens=prompt_tokens - plan.keep, generated_tokens=len(gen.tokens),
            latency_ms=latency_ms,
            extra={"prefill_ms": gen.prefill_ms, "decode_ms": gen.decode_ms,
                   "seeded_tokens": float(plan.keep if plan.seed_from else 0),
                   "decode_steps": float(gen.steps), "drafted_tokens": float(gen.drafted),
                   "accepted_tokens": float(gen.accepted)},
            token_logprobs=gen.logprobs, token_ends=text_ends(gen.tokens, decode, len(text)),
            score=gen.score if searched else None,
        )

    def healing_for(self, ids: list[int]) -> Healing | None:
        """The constraint that re-spells the prompt's last token, or None where there is none to heal
        (a one-token prompt, a special token such as PSM's `<fim_middle>`, part of a character)."""
        if len(ids) < 2 or ids[-1] in self.tokenizer.special_ids:
            return None
        texts = self.tokenizer.token_texts()
        text = texts.text_of(ids[-1])
        return Healing(text, texts) if healable(text, texts) else None

    def prepare_slot(self, doc_id: DocId, ids: list[int], total: int, warming: bool = False):
        """Carry out the table's plan on the buffers: evict, grow, seed. Returns (buffer, plan)."""
        plan = self.table.plan(doc_id, ids, total, warming)
        for victim in plan.evict:
            self.buffers.pop(victim, None)
        try:
            kv = self.buffers.get(doc_id)
            if kv is None:
                assert plan.keep == 0 or plan.seed_from is not None, f"slot {doc_id} lost its buffer"
                kv = self.buffers[doc_id] = self.new_buffer(plan.capacity)
            kv.grow(plan.capacity)
            if plan.seed_from is not None:
                kv.copy_prefix_from(self.buffers[plan.seed_from], plan.keep)
        except BaseException:  # out of memory while allocating: forget the slot rather than serve stale K/V
            self.table.evict(doc_id)
            self.buffers.pop(doc_id, None)
            raise
        return kv, plan

    def new_buffer(self, capacity: int) -> KVBuffer:
        """An empty K/V buffer for one document (a runtime with its own buffers overrides this)."""
        return KVBuffer(self.model.args, capacity, self.kv_dtype, self.device)

    def drop(self, doc_id: DocId) -> None:
        with self.lock:
            for slot_id in (doc_id, previous_region(doc_id)):
                self.table.drop(slot_id)
                self.buffers.pop(slot_id, None)

    def slot_tokens(self, doc_id: DocId) -> list[int]:
        """The token ids whose K/V the document's slot holds (empty when it has none)."""
        with self.lock:
            slot = self.table.slots.get(doc_id)
            return list(slot.cached_tokens) if slot else []

    def cache_stats(self) -> dict[str, int]:
        with self.lock:
            stats = list(self.table.stats.values())
            return {
                "slots": len(self.table.slots),
                "bytes": sum(b.nbytes for b in self.buffers.values()),
                "budget_bytes": self.table.budget_bytes,
                "reused_tokens": sum(s.reused for s in stats),
                "seeded_tokens": sum(s.seeded for s in stats),
                "prefilled_tokens": self.prompt_tokens_computed,
                "warmed_tokens": sum(s.warmed for s in stats),
                "runs": self.runs,
                "forwards": self.forwards,
                "forwards_after_cancel": self.forwards_after_cancel,
                "evictions": sum(s.evicted for s in stats),
            }
