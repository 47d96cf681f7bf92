"""The import layers (pyproject's import-linter contracts) hold, and the package has no cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else ["lint-imports"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def _cycles(graph) -> list[list[str]]:  # noqa: ANN001 - grimp's ImportGraph
    """Strongly connected groups of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = stack[stack.index(node) :]
                    del stack[stack.index(node) :]
                    if len(group) > 1:
                        found.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_module_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("synthbrain", include_external_packages=False)
    tracked = {m for m in graph.modules if _tracked(m)}
    cycles = [c for c in _cycles(graph) if set(c) <= tracked]
    assert cycles == []


def _tracked(module: str) -> bool:
    """Whether a module's file is under version control (work in progress is not judged)."""
    rel = Path(*module.split("."))
    candidates = [ROOT / f"{rel}.py", ROOT / rel / "__init__.py"]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        return False
    done = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                          capture_output=True)  # fmt: skip
    return done.returncode == 0
