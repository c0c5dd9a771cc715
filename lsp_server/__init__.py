"""fim-lsp's language server: document sync, the pure prompt core, and LSP handlers."""
