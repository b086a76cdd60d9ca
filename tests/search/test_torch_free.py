"""The search package must import without torch, diffusers, ray or fastapi."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "search.spec",
    "search.space",
    "search.encoding",
    "search.evaluator",
    "search.pareto",
    "search.problem",
    "search.strategy",
    "search.nsga2",
    "search.evolution",
    "search.random_search",
    "search.algorithms",
    "search.cache",
    "search.checkpoint",
    "search.runner",
    "search.exhaustive",
]


def test_search_imports_no_heavy_dependency() -> None:
    code = (
        f"import sys\nfor m in {MODULES!r}: __import__(m)\n"
        "heavy = sorted({'torch', 'diffusers', 'ray', 'fastapi'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
