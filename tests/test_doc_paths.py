"""Every test file and module the README and docs/ cite exists at that path (audit a4 #11: ten `tests/test_*.py`
paths in SECURITY.md, kubernetes.md and targets.md had moved into tests/<stage>/, and ARCHITECTURE.md named a
`hostcheck.py` that is `stackgen/host/check.py`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path as the docs write one: tests/... or stackgen/... ending in .py, a glob allowed (`tests/engines/test_sglang*.py`)
CITED = re.compile(r"(?<![\w./-])((?:tests|stackgen)/[\w./*-]+\.py)\b")


def cited() -> list[tuple[str, int, str]]:
    out = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            out += [(doc.relative_to(ROOT).as_posix(), n, m) for m in CITED.findall(line)]
    return out


def test_the_docs_cite_test_files_and_modules():
    paths = {p for _, _, p in cited()}
    assert any(p.startswith("tests/") for p in paths) and any(p.startswith("stackgen/") for p in paths)


@pytest.mark.parametrize("doc, line, path", cited(), ids=lambda v: str(v))
def test_every_cited_path_exists(doc, line, path):
    found = sorted(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).is_file() else []
    assert found, f"{doc}:{line}: {path} does not exist"


def test_no_doc_names_a_module_that_is_not_there():
    """Bare module names the docs used for modules that moved (hostcheck.py is stackgen/host/check.py; no
    hardware.py: host/detect.py probes)."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "hostcheck" not in text and "`hardware.py`" not in text, doc
