"""fim-lsp in JupyterLab: an inline completion provider (the prebuilt labextension) and a
jupyter-server extension that proxies its requests to `fim-lsp serve` over stdio."""
__version__ = "0.1.0"


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "fim-lsp-jupyterlab"}]


def _jupyter_server_extension_points():
    return [{"module": "fim_lsp_jupyterlab"}]


def _load_jupyter_server_extension(serverapp):
    from fim_lsp_jupyterlab.proxy import load

    load(serverapp)
