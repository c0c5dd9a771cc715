"""The memory plan of a model, from its config alone: what its weights and K/V cost, and where they fit.

`fim-lsp status` prints it before anything is loaded, so a model too large for this machine is
refused with the figures and the alternatives rather than dying of an out-of-memory error half
way through reading 30 GB. Sizes only: no weights are read; the int8 figure comes from
quantising the network on the meta device (shapes, no data).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.model import ModelArgs

PlanDtype = Literal["float32", "bfloat16", "float16", "int8", "int4"]
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
KV_DTYPE: dict[str, str] = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "int8": "bfloat16",
                               "int4": "bfloat16"}
MARGIN = 1.1  # as engine.loading.check_fits: weights are cast as read; 10% for activations and the allocator
GIB = 2**30


@dataclass(frozen=True, slots=True)
class Place:
    """Somewhere a model can live: a GPU or the machine's RAM, with the bytes free there now."""

    name: str  # "cuda:0 (NVIDIA H100)" or "RAM"
    kind: Literal["cuda", "cpu"]
    free: int


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Bytes per dtype for a model's weights and its K/V, and which dtypes fit where."""

    params: int
    n_ctx: int
    weights: dict[str, int]  # dtype -> bytes of the weights in it
    kv_per_token: dict[str, int]  # K/V dtype -> bytes one token takes across all layers
    places: tuple[Place, ...]
    fits: dict[str, tuple[str, ...]] = field(default_factory=dict)  # place name -> dtypes that fit

    def needed(self, dtype: str) -> int:
        """Bytes to hold the weights in `dtype` (with the margin) and one full window of K/V."""
        return int(self.weights[dtype] * MARGIN) + self.kv_window(KV_DTYPE[dtype])

    def kv_window(self, kv_dtype: str) -> int:
        return self.kv_per_token[kv_dtype] * self.n_ctx

    def place_of(self, device_type: str, index: int | None = None) -> Place | None:
        """The place a torch device names (the first GPU for a bare `cuda`)."""
        if device_type == "cpu":
            return next((p for p in self.places if p.kind == "cpu"), None)
        gpus = [p for p in self.places if p.kind == "cuda"]
        i = index or 0
        return gpus[i] if i < len(gpus) else None


def dtypes_for(kind: str) -> tuple[str, ...]:
    """The dtypes fim-lsp runs on a kind of place (int8 weights are the CPU's path)."""
    return ("bfloat16", "float16", "float32") if kind == "cuda" else ("int8", "bfloat16", "float32")


def memory_plan(args: ModelArgs, places: tuple[Place, ...], int8_bytes: int,
                int4_bytes: int | None = None) -> MemoryPlan:
    """The plan for a model of shape `args` over `places`; `int8_bytes`: its weights after int8
    quantisation (engine.quantize.int8_weight_bytes, passed in so this stays a sum of sizes);
    `int4_bytes`: after int4 quantisation (engine.int4.int4_weight_bytes), where `--dtype int4` is asked."""
    params = args.param_count()
    weights = {name: params * size for name, size in ELEMENT_BYTES.items()}
    weights["int8"] = int8_bytes
    if int4_bytes is not None:
        weights["int4"] = int4_bytes
    kv = {name: args.kv_bytes_per_token(size) for name, size in ELEMENT_BYTES.items()}
    plan = MemoryPlan(params=params, n_ctx=args.n_positions, weights=weights, kv_per_token=kv, places=places)
    fits = {p.name: tuple(d for d in dtypes_for(p.kind) + (("int4",) if int4_bytes is not None and p.kind == "cpu"
                                                           else ()) if plan.needed(d) <= p.free) for p in places}
    return MemoryPlan(params=params, n_ctx=args.n_positions, weights=weights, kv_per_token=kv, places=places,
                      fits=fits)


def size(n: int) -> str:
    """Bytes for a reader: GiB from 1 GiB up, else MiB."""
    return f"{n / GIB:,.2f} GiB" if n >= GIB else f"{n / 2**20:,.1f} MiB"


def render_plan(plan: MemoryPlan) -> list[str]:
    """The plan as lines for a terminal."""
    count = f"{plan.params / 1e9:.2f}B" if plan.params >= 1e9 else f"{plan.params / 1e6:.1f}M"
    lines = [f"memory plan ({count} parameters, window {plan.n_ctx:,} tokens):"]
    for dtype in ("float32", "bfloat16", "float16", "int8", "int4"):
        if dtype not in plan.weights:
            continue
        lines.append(f"  weights {dtype}: {size(plan.weights[dtype])}")
    for dtype in ("float32", "bfloat16"):
        per_token, window = plan.kv_per_token[dtype], size(plan.kv_window(dtype))
        lines.append(f"  K/V {dtype}: {per_token:,} B/token, {window} for the window")
    for place in plan.places:
        fit = ", ".join(plan.fits[place.name]) or "nothing"
        lines.append(f"  {place.name}: {place.free / GIB:,.1f} GiB free; fits {fit}")
    return lines


def alternatives(plan: MemoryPlan) -> list[str]:
    """What to run instead when the chosen placement does not fit: every placement that does,
    then a remote server."""
    out = []
    for place in plan.places:
        for dtype in plan.fits[place.name]:
            device = "cpu" if place.kind == "cpu" else place.name.split(" ")[0]
            what = f"{dtype} weights on the CPU" if dtype in ("int8", "int4") else f"{dtype} on {place.name}"
            out.append(f"{what}: --device {device} --dtype {dtype}")
    out.append("a remote server holding the model (llama.cpp, vLLM, TGI): --backend openai --url URL")
    return out


def visible_places() -> tuple[Place, ...]:
    """Every visible GPU and the RAM, with the bytes free on each now."""
    import torch

    from engine.loading import available_memory

    places = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, _total = torch.cuda.mem_get_info(i)
            places.append(Place(f"cuda:{i} ({torch.cuda.get_device_name(i)})", "cuda", int(free)))
    places.append(Place("RAM", "cpu", available_memory(torch.device("cpu"))))
    return tuple(places)
