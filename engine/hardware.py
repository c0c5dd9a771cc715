"""What this machine's CPU can do, read once per question from /proc/cpuinfo (no torch here).

Both the placement choice (`engine.select`) and the int8 kernels (`engine.quantize`) ask.
"""
from __future__ import annotations

from pathlib import Path


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_has_int8() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX int8)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags or " amx_int8" in flags
