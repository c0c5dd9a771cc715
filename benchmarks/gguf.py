"""GGUF conversions of GPTBigCode checkpoints, for llama.cpp as a peer or a remote server.

llama.cpp's own converter (`convert_hf_to_gguf.py`, vendored in llama-cpp-python's source
distribution) does the work: gpt_bigcode becomes GGUF arch `starcoder`. One thing it refuses is a
tokenizer it has not seen (it identifies the pre-tokenizer by hashing how a fixed text encodes),
which every locally trained tokenizer is. For those, the pre-tokenizer is read from the
checkpoint's tokenizer.json instead, by wrapping `TextModel.get_vocab_base_pre` (the converter
itself is untouched): plain byte-level with GPT-2 splitting (the checkpoint kit's, the bundled
model's) is llama.cpp's `gpt-2`; with single digits split first (StarCoder's) it is `starcoder`.
Anything else is refused, since a wrong choice would tokenize prompts differently from the model.

The 4-bit files (`q4_0`, `q4_k_m`) are not the converter's: llama.cpp's quantiser
(`llama_model_quantize`, shipped in llama-cpp-python) makes them from the f16 conversion, as
`llama-quantize` does. K-quants pack rows in super-blocks of 256 values; a tensor whose rows are
not a multiple of that falls back to another type (llama.cpp's choice, e.g. q4_K -> q5_0). What the
quantiser did (its fallbacks, the tensor types written) is kept beside the file as
`<name>.quantize.json` (`quantize_report`).

`ensure_gguf` keeps conversions in `<fim-lsp cache>/gguf/`, named after the checkpoint and keyed
by its content hash, so a retrained or rewritten checkpoint is converted again. The converter
runs in a child process (it patches itself and reads sys.argv) and shows its own progress bar.

    python -m benchmarks.gguf convert CKPT_DIR OUT.gguf [--outtype f32|f16|bf16|q8_0] [--quiet]
    python -m benchmarks.gguf quantize IN.gguf OUT.gguf --ftype q4_0|q4_k_m
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

OutType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m"]
CONVERTED = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself
QUANTISED = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # llama_model_quantize's
QUANTISE_FROM: OutType = "f16"  # what llama-quantize is usually given (and the f16 row's file)
# the quantiser's line for a tensor that cannot take the type asked for (llama.cpp 0.3.36 wording)
FALLBACK = re.compile(r"^warning: (?P<tensor>\S+)\s+- ncols\s+(?P<ncols>\d+) not divisible by (?P<block>\d+) "
                      r"\(required for type\s+(?P<wanted>\w+)\) -> falling back to\s+(?P<got>\w+)")
VERSION = "0.3.36"
CACHE = Path.home() / ".cache" / "fim-lsp" / "llama-cpp-python"
SDIST = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
VENDORED = f"llama_cpp_python-{VERSION}/vendor/llama.cpp"
CONVERTER_SRC = CACHE / "src" / VENDORED  # holds convert_hf_to_gguf.py, conversion/, gguf-py/
NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
REPO = Path(__file__).resolve().parent.parent


def fetch() -> Path:
    """Download the sdist with pip (once) and unpack the converter; returns its directory."""
    if not SDIST.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", str(CACHE)], check=True)
    if not (CONVERTER_SRC / "convert_hf_to_gguf.py").is_file():
        with tarfile.open(SDIST) as tar:
            members = [m for m in tar.getmembers()
                       if any(m.name == f"{VENDORED}/{n}" or m.name.startswith(f"{VENDORED}/{n}") for n in NEEDED)]
            tar.extractall(CACHE / "src", members=members, filter="data")
    return CONVERTER_SRC


def convert(checkpoint: Path, out: Path, outtype: OutType = "f32", src: Path = CONVERTER_SRC,
            quiet: bool = False) -> Path:
    """Write `out` from the checkpoint directory with llama.cpp's converter in `src` (in this process).

    `quiet`: drop the converter's per-tensor log lines (its progress bar stays).
    """
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"no llama.cpp converter in {src}; run `python scripts/convert_to_gguf.py fetch` first")
    if not (checkpoint / "config.json").is_file():
        raise SystemExit(f"{checkpoint} is not a checkpoint directory (no config.json)")
    if quiet:  # the converter's own basicConfig(INFO) is then a no-op
        logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(src))
    import convert_hf_to_gguf  # noqa: F401  - puts its gguf-py on sys.path, registers the models
    from conversion.base import TextModel

    recognised = TextModel.get_vocab_base_pre
    local = pre_tokenizer_name(json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8")))

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return recognised(self, tokenizer)
        except NotImplementedError:  # a locally trained tokenizer: its own pre-tokenizer, read above
            if local is None:
                raise SystemExit(f"{checkpoint}/tokenizer.json: a pre-tokenizer llama.cpp does not know") from None
            return local

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.argv = ["convert_hf_to_gguf.py", str(checkpoint), "--outfile", str(out), "--outtype", outtype]
    convert_hf_to_gguf.main()
    return out


def quantize(src: Path, out: Path, ftype: str, threads: int = 0) -> dict[str, int]:
    """Write `out` from the GGUF `src` with llama.cpp's quantiser (in this process); the tensor types written.

    `ftype`: a key of QUANTISED. The quantiser logs each tensor (and each fallback) on stderr.
    """
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTISED[ftype])
    params.nthread = threads  # 0: llama.cpp's default, the machine's threads
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if failed:
        raise SystemExit(f"llama_model_quantize({src.name} -> {ftype}) returned {failed}")
    return tensor_types(out)


def tensor_types(gguf: Path, src: Path = CONVERTER_SRC) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds (read with llama.cpp's gguf-py)."""
    from collections import Counter

    sys.path.insert(0, str(src / "gguf-py"))
    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(str(gguf)).tensors).items()))


def fallbacks(log: str) -> list[dict]:
    """The quantiser's fallbacks in its log: tensor, its row length, the type asked for and the one written."""
    found = []
    for line in log.splitlines():
        m = FALLBACK.match(line.strip())
        if m:
            found.append({"tensor": m["tensor"], "ncols": int(m["ncols"]), "block": int(m["block"]),
                          "wanted": m["wanted"], "got": m["got"]})
    return found


def report_path(gguf: Path) -> Path:
    """Where what the quantiser did to make `gguf` is kept."""
    return gguf.with_name(gguf.stem + ".quantize.json")


def quantize_report(gguf: Path) -> dict | None:
    """What the quantiser did to make `gguf` (None for the converter's own files)."""
    path = report_path(Path(gguf))
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def describe_report(report: dict) -> str:
    """One line: the tensor types written and the fallbacks, e.g. `Q4_K 96, Q6_K 25, F32 195; 0 fallbacks`."""
    types = ", ".join(f"{name} {n}" for name, n in sorted(report["tensor_types"].items(), key=lambda kv: -kv[1]))
    moves: dict[str, int] = {}
    for f in report["fallbacks"]:
        key = f"{f['wanted']}->{f['got']}"
        moves[key] = moves.get(key, 0) + 1
    detail = " (" + ", ".join(f"{k} x{n}" for k, n in moves.items()) + ")" if moves else ""
    total = sum(report["tensor_types"].values())
    return (f"{report['ftype']} from {report['source_type']}: {types}; {len(report['fallbacks'])} of {total} "
            f"tensors fell back{detail}")


def pre_tokenizer_name(tokenizer: dict) -> str | None:
    """llama.cpp's name for a tokenizer.json's pre-tokenizer, when it is one of the two we make."""
    pre = tokenizer.get("pre_tokenizer") or {}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    if all(pre.get(k) == v for k, v in byte_level.items()):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Digits"
            and steps[0].get("individual_digits") and all(steps[1].get(k) == v for k, v in byte_level.items())):
        return "starcoder"
    return None


def gguf_cache_dir() -> Path:
    """`<fim-lsp cache>/gguf`."""
    from fim_lsp.training.checkpoint_kit import default_cache_dir

    return default_cache_dir() / "gguf"


def cached_gguf_path(checkpoint: Path, outtype: OutType, source_hash: str, cache_dir: Path) -> Path:
    """Where the conversion of this checkpoint's current bytes to `outtype` lives."""
    return cache_dir / f"{checkpoint.name}-{source_hash[:16]}-{outtype}.gguf"


def ensure_gguf(checkpoint: Path, outtype: OutType, cache_dir: Path | None = None,
                say: Callable[[str], None] = lambda msg: None, source_hash: str | None = None) -> Path:
    """The cached GGUF of `checkpoint` in `outtype`, converted (in a child process) when missing.

    Keyed by the checkpoint's content hash (`source_hash`, computed when not given). A conversion
    is written under a temporary name and renamed when complete, so an interrupted one is redone.
    The 4-bit types are quantised from the f16 conversion (made first when missing).
    """
    from engine.onnx_format import checkpoint_hash

    checkpoint = Path(checkpoint).resolve()
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint directory (no config.json)")
    source_hash = source_hash or checkpoint_hash(checkpoint)
    out = cached_gguf_path(checkpoint, outtype, source_hash, cache_dir or gguf_cache_dir())
    if out.is_file():
        return out
    fetch()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    if outtype in QUANTISED:
        source = ensure_gguf(checkpoint, QUANTISE_FROM, cache_dir, say, source_hash)
        return quantize_cached(source, out, partial, outtype, say)
    say(f"converting {checkpoint.name} to GGUF {outtype} with llama.cpp's converter (once; cached as {out.name})")
    done = subprocess.run([sys.executable, "-m", "benchmarks.gguf", "convert", str(checkpoint), str(partial),
                           "--outtype", outtype, "--quiet"], cwd=REPO)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"converting {checkpoint} to GGUF {outtype} failed (exit {done.returncode}); "
                           f"its messages are above")
    partial.rename(out)
    return out


def quantize_cached(source: Path, out: Path, partial: Path, ftype: str, say: Callable[[str], None]) -> Path:
    """`out` quantised from `source` in a child process, with its report beside it; written under
    `partial` and renamed when both are complete."""
    say(f"quantising {source.name} to {ftype} with llama.cpp's quantiser (once; cached as {out.name})")
    done = subprocess.run([sys.executable, "-m", "benchmarks.gguf", "quantize", str(source), str(partial),
                           "--ftype", ftype], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise RuntimeError(f"quantising {source.name} to {ftype} failed (exit {done.returncode}):\n{tail}")
    report = {"ftype": ftype, "source": source.name, "source_type": QUANTISE_FROM,
              "tensor_types": json.loads(done.stdout.strip().splitlines()[-1]), "fallbacks": fallbacks(done.stderr)}
    report_path(out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    partial.rename(out)
    say(f"{out.name}: {describe_report(report)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/convert_to_gguf.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download llama-cpp-python's sdist (pip) and unpack its converter")
    sub.add_parser("sdist", help="print the path of the fetched sdist")
    p = sub.add_parser("convert", help="convert a checkpoint directory to a GGUF file")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"])
    p.add_argument("--src", type=Path, default=CONVERTER_SRC, help="llama.cpp source holding convert_hf_to_gguf.py")
    p.add_argument("--quiet", action="store_true", help="only warnings and the progress bar")
    p = sub.add_parser("quantize", help="quantise a GGUF file with llama.cpp's quantiser; prints the tensor types")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--ftype", required=True, choices=sorted(QUANTISED))
    p.add_argument("--threads", type=int, default=0, help="0: llama.cpp's default")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch())
    elif args.command == "sdist":
        print(SDIST)
    elif args.command == "quantize":
        print(json.dumps(quantize(args.src, args.out, args.ftype, args.threads)))
    else:
        convert(args.checkpoint, args.out, args.outtype, args.src, args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
