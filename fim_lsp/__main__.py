"""`python -m fim_lsp ...`: the same command line as `fim-lsp ...`."""
import sys

from fim_lsp.cli import main

sys.exit(main())
