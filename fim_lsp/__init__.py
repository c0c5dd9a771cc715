"""The `fim-lsp` command line and the tools around the server: training, evaluation, the engine daemon."""
