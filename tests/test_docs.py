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


TWISTD_OWN_OPTIONS = ("--logfile", "--pidfile", "--nodaemon", "--rundir", "--syslog", "--umask")
"""twistd's options: on a command line they go before the plugin's name, or the plugin refuses them."""


def misplaced_twistd_options(text: str) -> list[str]:
    """Every ``twistd ... numd[-client] ... --logfile`` command written in `text` (a twistd option
    after the plugin's name, where the plugin gets it)."""
    found = []
    for command in re.findall(r"\btwistd [^`\n#]*", text):
        words = command.split()
        plugin = next((i for i, w in enumerate(words) if w in ("numd", "numd-client")), None)
        if plugin is not None and any(
            w.split("=")[0] in TWISTD_OWN_OPTIONS for w in words[plugin + 1 :]
        ):
            found.append(command.strip())
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_twistd_options_come_before_the_plugin_name(doc: Path) -> None:
    """No document shows ``twistd -n numd-client --connect --logfile client.log``, which fails:
    twistd's own options go before ``numd`` or ``numd-client``."""
    assert misplaced_twistd_options(doc.read_text(encoding="utf-8")) == []


def test_misplaced_twistd_options_are_found() -> None:
    """The check above finds the command issue 16 reported, and passes the right order."""
    wrong = "twistd -n numd-client --connect --logfile client.log # plugin"
    assert misplaced_twistd_options(wrong) == [
        "twistd -n numd-client --connect --logfile client.log"
    ]
    assert misplaced_twistd_options("twistd -n --logfile client.log numd-client --connect") == []
