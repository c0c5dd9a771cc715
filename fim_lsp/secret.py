"""The shared secret a listening server or engine requires: from a file or the environment, never
the command line (every local user can read a command line in the process list)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TOKEN_ENV = "FIM_LSP_TOKEN"


def read_token(args: argparse.Namespace, prog: str) -> str | None:
    """From --token-file, else $FIM_LSP_TOKEN, else the deprecated --token (with a warning)."""
    if getattr(args, "token_file", None):
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty")
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if getattr(args, "token", None):
        print(f"{prog}: --token is deprecated (every local user can read it in the process list); "
              f"use --token-file PATH or ${TOKEN_ENV}", file=sys.stderr)
        return args.token
    return None
