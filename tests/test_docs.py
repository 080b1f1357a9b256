"""docs/: generated parts are current, links between documents resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.mark.parametrize("script", ["gen_cli_doc.py", "gen_doc_snippets.py"])
def test_generated_docs_are_current(script: str) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, f"{run.stderr.strip()}"


def test_relative_links_resolve() -> None:
    for doc in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_index_lists_every_document() -> None:
    index = (DOCS / "README.md").read_text()
    for doc in DOCS.glob("*.md"):
        if doc.name != "README.md":
            assert f"({doc.name})" in index, f"docs/README.md does not link {doc.name}"
