"""Do notebook suggestions change with StarCoder's Jupyter format? HumanEval problems as notebooks.

Each single-line HumanEval infilling problem becomes a two-cell notebook: a markdown cell with the
function's docstring and a code cell with the function, its docstring removed, and the hole. The
same product pipeline completes the hole twice, with the notebook written in the percent format
(markdown as comments) and in the Jupyter format (`<jupyter_text>` / `<jupyter_code>`), and the
table counts the suggestions that differ and the exact matches of each. Run:

    python -m benchmarks.notebook_format [--model DIR] [--problems N]

The model must have the Jupyter tokens (the bundled default model does; it was trained on plain
Python files, so it saw neither format: a change says the format reaches the model, not which
format a StarCoder-trained model prefers).
"""
from __future__ import annotations

import argparse
import inspect
import re
import time

DOCSTRING = re.compile(r'\n(\s+)("""|\'\'\')(.*?)\2[^\n]*\n', re.S)


def as_notebook(prompt: str, suffix: str):
    """(cells, index of the code cell, line, character) for a problem; None where it has no docstring."""
    from lsp_server.core.notebook import Cell

    found = DOCSTRING.search(prompt)
    if found is None:
        return None
    doc = inspect.cleandoc(found.group(3))
    code_before = prompt[: found.start()] + "\n" + prompt[found.end():]
    cells = [Cell("markdown", doc), Cell("code", code_before + suffix.rstrip("\n"))]
    line = code_before.count("\n")
    return cells, 1, line, len(code_before) - (code_before.rfind("\n") + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--problems", type=int, default=100)
    args = parser.parse_args(argv)

    from lsp_server.config import ModelConfig
    from fim_lsp.evaluation.evaluate import exact_match, load_problems, pipeline_config_for
    from lsp_server.core.notebook import map_cell_position, notebook_text
    from lsp_server import pipeline

    backend = pipeline.load_model(ModelConfig(model=args.model, dtype="float32"))
    if not backend.fim.jupyter:
        print("the model's tokenizer has no Jupyter tokens; nothing to compare")
        return 2
    config = pipeline_config_for("single-line", 128)
    rows = {"percent": 0, "jupyter": 0}
    changed = compared = 0
    start = time.perf_counter()
    for problem in load_problems("single-line", limit=args.problems):
        shaped = as_notebook(problem.prompt, problem.suffix)
        if shaped is None:
            continue
        cells, index, line, character = shaped
        texts = {}
        for style in rows:
            text, _ = notebook_text(cells, "python", style)
            doc_line, doc_char = map_cell_position(cells, "python", index, line, character, "utf-32", style)
            outcome = pipeline.complete(backend, f"{problem.task_id}/{style}", text, doc_line, doc_char,
                                        encoding="utf-32", config=config, path="problem.ipynb")
            backend.drop(f"{problem.task_id}/{style}")
            texts[style] = outcome.suggestion.text if outcome.suggestion is not None else ""
            rows[style] += int(exact_match(texts[style], problem.canonical_solution))
        compared += 1
        changed += int(texts["percent"] != texts["jupyter"])
    seconds = time.perf_counter() - start
    print("| model | problems | suggestions changed | exact match: percent | exact match: jupyter |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {backend.info.model} | {compared} | {changed} | {rows['percent']} | {rows['jupyter']} |")
    print(f"({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
