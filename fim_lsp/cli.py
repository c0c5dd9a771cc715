"""The `fim-lsp` command line: one parser, each subcommand dispatched lazily to its module.

Arguments are declared here (cheap to import, so `--help` is instant); the work happens in the
module named in COMMANDS, imported only when its subcommand runs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("fim_lsp.serve", "main_serve", "run the language server (stdio, or --tcp HOST:PORT)"),
    "demo": ("fim_lsp.demo", "main_demo", "type a sample file through the real server and print suggestions"),
    "complete": ("fim_lsp.complete", "main_complete", "complete one cursor position in a file"),
    "bench": ("benchmarks.cli", "main_bench", "run a benchmark and print its table"),
    "export-onnx": ("fim_lsp.export_onnx", "main_export", "export a checkpoint to ONNX (optionally int8)"),
    "eval": ("fim_lsp.evaluation.evaluate", "main_eval", "exact match on the HumanEval infilling problems"),
    "make-checkpoint": ("fim_lsp.training.checkpoint_kit", "main_make_checkpoint",
                        "write a random-weight GPTBigCode checkpoint"),
    "status": ("fim_lsp.status", "main_status", "show which backend, device and dtype a model would use"),
    "engine": ("fim_lsp.daemon", "main_engine", "serve one shared engine to several fim-lsp servers"),
}


def add_beam_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", "--branches", dest="beam", type=int, default=None, metavar="N",
                   help="one-line suggestions: compare N lines (a beam search) and show the likeliest "
                        "(the server's `beam` setting; default: 3 for models under 100 M parameters, else 1; "
                        "--branches is its old name)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options that choose and place the model; shared by every command that loads one."""
    p.add_argument("--model", default=None,
                   help="checkpoint directory or hub id (default: the bundled default model)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openai"],
                   help="runtime; auto picks the fastest available (see `fim-lsp status`)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "int8", "int4"],
                   help="int8 / int4: int8 or 4-bit weights on the CPU (docs/benchmarks/cpu-decode.md); "
                        "auto picks per device (never int4)")
    p.add_argument("--url", default=None, help="OpenAI-compatible server URL for --backend openai")
    p.add_argument("--ca-bundle", default=None, metavar="PEM",
                   help="CA certificates trusted for an https --url (default: the system's, or $SSL_CERT_FILE)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--speculate", type=int, default=None, metavar="N",
                   help="prompt-lookup draft tokens verified per greedy step; 0 = off (default: where it pays, "
                        "see docs/benchmarks/speculative.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fim-lsp", description="Fill-in-the-middle code completion over LSP.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parsers = {name: sub.add_parser(name, help=help_, description=help_) for name, (_, _, help_) in COMMANDS.items()}

    p = parsers["serve"]
    add_model_options(p)
    p.add_argument("--stdio", action="store_true", help="speak LSP on stdin/stdout (the default)")
    p.add_argument("--tcp", metavar="HOST:PORT", default=None, help="listen on TCP instead of stdio")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="file holding the shared secret a --tcp client must send (or set $FIM_LSP_TOKEN); "
                        "required when --tcp binds beyond loopback")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # deprecated: visible in the process list
    p.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="--tcp: drop a connection that has not completed initialize in this time (default 10)")
    p.add_argument("--allow-client-url", action="store_true",
                   help="send $FIM_LSP_API_KEY to a url a client sets in its settings too (default: only to --url)")
    add_beam_option(p)

    p = parsers["demo"]
    add_model_options(p)
    p.add_argument("--file", default=None, help="file to type (default: a bundled sample)")
    p.add_argument("--keys", type=int, default=60, help="characters to type")
    add_beam_option(p)

    p = parsers["complete"]
    add_model_options(p)
    p.add_argument("file", help="source file")
    p.add_argument("--line", type=int, action="append", help="0-based line (repeatable)")
    p.add_argument("--character", type=int, action="append", help="0-based column in code points (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--fim-mode", choices=["auto", "spm", "psm"], default="auto")
    add_beam_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per position")

    p = parsers["bench"]
    p.add_argument("which", choices=["keystrokes", "backends", "remote", "peer", "soak", "speculative", "beam",
                                        "session"])
    add_model_options(p)
    p.add_argument("--shape", default="small", help="checkpoint-kit shape when no --model is given")
    p.add_argument("--problems", type=int, default=20, help="HumanEval problems to replay")
    p.add_argument("--max-keys", type=int, default=None, help="cap on keystrokes per problem")
    p.add_argument("--context", type=int, default=None, help="prompt tokens to aim for")
    p.add_argument("--edits", type=int, default=10_000, help="soak: edits to make")
    p.add_argument("--docs", type=int, default=50, help="soak: open documents")
    p.add_argument("--cache-mib", type=int, default=64, help="soak: K/V cache budget (MiB)")
    p.add_argument("--plot", default="soak.png", help="soak: where to save the latency/RSS plot (PNG)")
    p.add_argument("--seed", type=int, default=0, help="soak, session: random seed")
    p.add_argument("--modes", default=None,
                   help="session: comma-separated modes to run (default: all, today's behaviour first)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="session: tokens per suggestion")
    p.add_argument("--time-budget-ms", type=int, default=None,
                   help="session: the server's timeBudgetMs in every mode (llama.vim caps prediction at 500-1000 ms)")
    p.add_argument("--rows", default=None,
                   help="peer: comma-separated rows to run (e.g. 'torch int8,llama.cpp q8_0'); default: our "
                        "fastest CPU rows (torch int8, torch int4) and the four llama.cpp rows")
    p.add_argument("--passes", type=int, default=3,
                   help="peer: passes over the timings and keystrokes, every row interleaved (default 3)")
    p.add_argument("--json", action="store_true")

    p = parsers["export-onnx"]
    add_model_options(p)
    p.add_argument("--out", required=True)
    p.add_argument("--int8", action="store_true", help="quantise MatMul weights to int8")
    p.add_argument("--opset", type=int, default=18)

    p = parsers["eval"]
    add_model_options(p)
    p.add_argument("--benchmark", choices=["single-line", "multi-line", "idioms"], default="single-line")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--pass-at-1", action="store_true", help="also run the tests in a sandboxed subprocess")
    p.add_argument("--min-token-probability", type=float, default=0.0, metavar="P",
                   help="hide suggestions with a token the model gave less than P (the server's minTokenProbability)")
    add_beam_option(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--results", metavar="FILE", default=None,
                   help="also write each problem's suggestion and score to FILE, one JSON object a line")

    p = parsers["make-checkpoint"]
    p.add_argument("--shape", default="tiny", choices=["tiny", "small", "santacoder", "starcoderbase-1b",
                                                       "starcoderbase-7b", "starcoder-15b"],
                   help="starcoderbase-7b and starcoder-15b: config only (for `status`'s memory plan)")
    p.add_argument("--family", choices=["santacoder", "starcoder"], default="starcoder")
    p.add_argument("--mha", action="store_true", help="multi-head attention (SantaCoder's mha revision)")
    p.add_argument("--layout", default="gpt_bigcode", choices=["gpt_bigcode", "santacoder-remote-code",
                                                               "santacoder-megatron", "santacoder-megatron-custom"])
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.add_argument("--config-only", action="store_true", help="write config.json only (no weights, no tokenizer)")

    p = parsers["status"]
    add_model_options(p)
    p.add_argument("--json", action="store_true")

    p = parsers["engine"]
    add_model_options(p)
    p.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="file holding the secret clients must send as their API key (or set $FIM_LSP_TOKEN); "
                        "required when --listen binds beyond loopback")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # deprecated: visible in the process list
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name, _ = COMMANDS[args.command]
    if importlib.util.find_spec(module_name) is None:
        print(f"fim-lsp {args.command}: not yet implemented", file=sys.stderr)
        return 3
    func = getattr(importlib.import_module(module_name), func_name, None)
    if func is None:
        print(f"fim-lsp {args.command}: not yet implemented", file=sys.stderr)
        return 3
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
