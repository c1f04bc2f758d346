"""The docs name tests that exist: every ``tests/file.py::test_name`` a doc cites (and the bare
``test_names`` after it in the same table cell) is a test function of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
_CITATION = re.compile(r"`(tests/[\w/]+\.py)::(\w+)|`(test_\w+)")


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name) for every test a document cites; a bare name belongs to the file named
    before it in the same table cell."""
    found = []
    for cell in text.split("|"):
        current = None
        for match in _CITATION.finditer(cell):
            if match.group(1):
                current, name = match.group(1), match.group(2)
            elif current is not None:
                name = match.group(3)
            else:
                continue
            found.append((current, name))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_test_exists(doc: Path) -> None:
    """A renamed or moved test does not leave a document pointing at nothing."""
    missing = []
    for path, name in cited_tests(doc.read_text(encoding="utf-8")):
        source = ROOT / path
        if name.endswith("_"):  # a family, e.g. test_bad_integer_*
            pattern = r"def " + re.escape(name)
        else:
            pattern = r"def " + re.escape(name) + r"\b"
        if not source.exists() or not re.search(pattern, source.read_text(encoding="utf-8")):
            missing.append(f"{path}::{name}")
    assert missing == []
