"""Every Python block of the README and of docs/ runs as written.

The blocks of one page run in order in one namespace (as a reader pastes them into one
session), in a temporary folder (files they save land there). A block that fails names its
page and line. Shell commands are ``bash`` blocks (the CLI has its own tests); long
measurements are benchmarks (``python -m benchmarks.NAME``), whose results are committed.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
#: packages some pages need (the page skips without them; CI installs them all)
OPTIONAL = ("sklearn", "torch_geometric", "pandas", "lightning", "tensorboard")


def python_blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_the_pages_have_python_blocks_to_check():
    counted = {p.name: len(python_blocks(p)) for p in PAGES}
    assert counted["README.md"] >= 2 and counted["tutorial.md"] >= 5, counted


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(page):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102
        except ModuleNotFoundError as exc:
            if exc.name in OPTIONAL:
                pytest.skip(f"{page.name} needs {exc.name}")
            raise
        except Exception as exc:
            pytest.fail(f"{page.relative_to(ROOT)}, the block at line {line}: "
                        f"{type(exc).__name__}: {exc}")
