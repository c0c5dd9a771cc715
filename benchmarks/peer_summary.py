"""The arithmetic of `fim-lsp bench peer`: per-pass figures in, medians, spreads and ratios out.

Pure functions over plain records (no torch, no llama.cpp), so the numbers the bench prints can be
checked on literal inputs. A row's figures are taken per pass; the table shows each figure's
median over passes (and its min-max). A ratio against a llama.cpp row is taken within each pass,
where both rows ran interleaved under the same conditions, and then summarised by its median and
min-max over passes: a ratio of medians would mix one row's good pass with the other's bad one.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

FIGURES = ("prefill_s", "plus_one_s", "decode_s", "keystroke_p50_s", "keystroke_p95_s")  # per pass, seconds
PEER_PREFIX = "llama.cpp "  # rows whose mode starts so are the peer's; the others are ours
REFERENCE = "torch fp32"  # the row "same tokens" compares with
Q8 = "llama.cpp q8_0"
Q4_K_M = "llama.cpp Q4_K_M"


@dataclass(slots=True)
class RowRun:
    """Everything one row did over the passes (or why it could not)."""

    mode: str
    why: str = ""  # what the backend said it runs
    weight_bytes: int = 0  # what one decode step reads
    passes: list[dict] = field(default_factory=list)  # `pass_figures` of each pass, in order
    tokens: list[list[int]] = field(default_factory=list)  # the first pass's replay tokens, per keystroke
    error: str | None = None  # one line: why the row has no figures
    idle_cpu_s: float = 0.0  # CPU its worker used while another row ran (threads left spinning)
    quantization: str | None = None  # llama.cpp's quantiser's report for the 4-bit GGUFs


def is_peer(mode: str) -> bool:
    return mode.startswith(PEER_PREFIX)


def slug(mode: str) -> str:
    """A JSON name for a row: `llama.cpp Q4_K_M` -> `llamacpp_q4_k_m`, `torch int8` -> `torch_int8`."""
    return mode.replace("llama.cpp ", "llamacpp_").replace(" ", "_").lower()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    assert ordered, "a percentile of no values"
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    assert values, "a spread of no values"
    return statistics.median(values), min(values), max(values)


def pass_figures(timing: dict, latencies_s: Sequence[float], prefill_tokens: Sequence[int]) -> dict:
    """One pass of one row: its forward timings and the keystroke percentiles of its warm requests."""
    assert latencies_s, "a pass with no warm keystrokes: raise --max-keys"
    return {**{k: timing[k] for k in ("prefill_s", "plus_one_s", "decode_s")},
            "plus_one_evaluated": timing["plus_one_evaluated"],
            "keystroke_p50_s": statistics.median(latencies_s), "keystroke_p95_s": percentile(latencies_s, 95),
            "keystrokes": len(latencies_s), "keystroke_prefill_median": statistics.median(prefill_tokens)}


def pass_ratios(ours: RowRun, peer: RowRun, figure: str = "keystroke_p50_s") -> list[float]:
    """ours / peer within each pass."""
    assert len(ours.passes) == len(peer.passes), f"{ours.mode} and {peer.mode} ran different numbers of passes"
    return [a[figure] / b[figure] for a, b in zip(ours.passes, peer.passes)]


def fastest_ours(runs: Sequence[RowRun]) -> RowRun | None:
    """Our row with the lowest median keystroke p50 (rows without figures left out)."""
    ours = [r for r in runs if not is_peer(r.mode) and r.passes]
    return min(ours, key=lambda r: spread([p["keystroke_p50_s"] for p in r.passes])[0], default=None)


def row_summary(run: RowRun, peers: Sequence[RowRun], bandwidth: float, reference: RowRun | None) -> dict:
    """A row's medians and spreads over passes, its floor, and (ours) its per-pass ratios to each peer row."""
    out: dict = {"mode": run.mode, "why": run.why}
    if run.error is not None:
        return {**out, "error": run.error}
    for figure in FIGURES:
        out[figure], out[f"{figure}_min"], out[f"{figure}_max"] = spread([p[figure] for p in run.passes])
    out["plus_one_evaluated"] = max(p["plus_one_evaluated"] for p in run.passes)
    out["keystrokes"] = run.passes[0]["keystrokes"]  # per pass
    out["keystroke_prefill_median"] = statistics.median(p["keystroke_prefill_median"] for p in run.passes)
    out["weight_bytes"] = run.weight_bytes
    out["floor_s"] = run.weight_bytes / bandwidth  # a decode step reads every weight once
    out["decode_over_floor"] = out["decode_s"] / out["floor_s"]
    out["idle_cpu_s"] = run.idle_cpu_s
    if run.quantization:
        out["quantization"] = run.quantization
    out["same_tokens"] = None
    if reference is not None and reference.tokens:
        from benchmarks.backends import agreement

        out["same_tokens"] = agreement(reference.tokens, run.tokens)[1]
    if not is_peer(run.mode):
        for peer in peers:
            name = f"ratio_vs_{slug(peer.mode)}"
            ratios = pass_ratios(run, peer)
            out[name], out[f"{name}_min"], out[f"{name}_max"] = spread(ratios)
            out[f"{name}_passes"] = ratios
    out["passes"] = run.passes
    return out


def summarize(runs: Sequence[RowRun], bandwidths: Sequence[float]) -> dict:
    """The bench's JSON object: rows, bandwidth, and our fastest row's keystroke ratios to q8_0 and Q4_K_M.

    `bandwidths`: bytes/s, one measurement per pass; floors use their median.
    """
    bandwidth = statistics.median(bandwidths)
    ran = [r for r in runs if r.error is None]
    peers = [r for r in ran if is_peer(r.mode)]
    reference = next((r for r in ran if r.mode == REFERENCE), None)
    rows = [row_summary(r, peers, bandwidth, reference) for r in runs]
    summary: dict = {"rows": rows, "passes": max((len(r.passes) for r in ran), default=0),
                     "bandwidth_gb_s": bandwidth / 1e9, "bandwidth_gb_s_passes": [b / 1e9 for b in bandwidths],
                     "failed": {r.mode: r.error for r in runs if r.error is not None}}
    best = fastest_ours(ran)
    if best is not None:
        summary["fastest_ours"] = best.mode
        by_mode = {r["mode"]: r for r in rows}
        for peer in (Q8, Q4_K_M):
            if peer in by_mode and "error" not in by_mode[peer]:
                name = f"ratio_vs_{slug(peer)}"
                key = f"keystroke_p50_ratio_vs_{slug(peer)}"
                summary[key] = by_mode[best.mode][name]
                summary[f"{key}_min"] = by_mode[best.mode][f"{name}_min"]
                summary[f"{key}_max"] = by_mode[best.mode][f"{name}_max"]
    int8 = next((r for r in rows if r["mode"] == "torch int8" and "error" not in r), None)
    if int8 is not None:
        summary["torch_int8_decode_over_floor"] = int8["decode_over_floor"]
    return summary


def format_table(summary: dict) -> str:
    """The peer table in markdown: medians over passes, [min-max] where the spread matters."""
    head = ("backend", "prefill 1k s", "+1 on 1k s", "decode s/token", "keystroke p50 s [min-max]",
            "keystroke p95 s", "p50 / q8_0 [min-max]", "p50 / Q4_K_M [min-max]", "weight bytes",
            "floor s/token", "decode / floor", "same tokens")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | not run: {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [r["mode"], f"{r['prefill_s']:.3g}", f"{r['plus_one_s']:.3g}", f"{r['decode_s']:.3g}",
                 f"{r['keystroke_p50_s']:.3g} [{r['keystroke_p50_s_min']:.3g}-{r['keystroke_p50_s_max']:.3g}]",
                 f"{r['keystroke_p95_s']:.3g}"]
        for peer in (Q8, Q4_K_M):
            name = f"ratio_vs_{slug(peer)}"
            cells.append(f"{r[name]:.2f} [{r[f'{name}_min']:.2f}-{r[f'{name}_max']:.2f}]" if name in r else "")
        cells += [f"{r['weight_bytes'] / 1e6:.1f} MB", f"{r['floor_s']:.3g}", f"{r['decode_over_floor']:.2f}",
                  "" if r["same_tokens"] is None else f"{r['same_tokens']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
