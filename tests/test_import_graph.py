"""The layout's rules, checked over the import graph of the source (every import, function-level too).

- No import cycles between modules.
- The engine imports neither the language server nor the tools; the language server imports no
  tool; nothing shipped imports the tests.
The checker is shown failing on constructed graphs, so a passing run means something.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "lsp_server", "fim_lsp", "benchmarks")
# package -> packages it must never import
FORBIDDEN = {
    "engine": ("lsp_server", "fim_lsp", "benchmarks", "tests"),
    "lsp_server": ("fim_lsp", "benchmarks", "tests"),
    "fim_lsp": ("benchmarks", "tests"),
}

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_graph(packages: tuple[str, ...] = PACKAGES) -> Graph:
    """module -> the project's modules it imports (a `from pkg import name` counts `pkg.name`
    where that is a module, else `pkg`)."""
    files = {module_name(p): p for pkg in packages for p in (ROOT / pkg).rglob("*.py")}
    known = set(files) | {m for m in (module_name(p) for p in (ROOT / "tests").rglob("*.py"))}
    graph: Graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def forbidden_edges(graph: Graph) -> list[tuple[str, str]]:
    """(importer, imported) pairs that cross a line FORBIDDEN draws."""
    bad = []
    for module, deps in graph.items():
        rules = FORBIDDEN.get(module.split(".")[0], ())
        bad += [(module, dep) for dep in sorted(deps) if dep.split(".")[0] in rules]
    return bad


def test_the_checker_finds_a_cycle_and_an_engine_to_server_import_in_a_constructed_graph():
    graph = {
        "engine.select": {"engine.quantize"},
        "engine.quantize": {"engine.select"},  # the cycle this layout once had
        "engine.daemon": {"lsp_server.server"},  # the engine reaching into the server
        "lsp_server.server": {"engine.api"},
        "engine.api": set(),
    }
    assert cycles(graph) == [["engine.quantize", "engine.select"]]
    assert forbidden_edges(graph) == [("engine.daemon", "lsp_server.server")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_source_has_no_import_cycles():
    graph = source_graph()
    assert len(graph) > 50, "the graph covers the source"
    assert cycles(graph) == []


def test_the_engine_never_imports_the_server_and_the_server_never_imports_a_tool():
    graph = source_graph()
    assert "engine.select" in graph and "lsp_server.server" in graph
    assert forbidden_edges(graph) == []


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = [p for pkg in ("engine", "lsp_server", "fim_lsp") for p in (ROOT / pkg).rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") and "samples" not in p.parts]
    assert len(modules) > 40
    assert [str(p.relative_to(ROOT)) for p in modules if f"`{p.name}`" not in page] == []
