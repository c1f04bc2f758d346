"""Packaging: the twistd plugins are found, and a wheel ships them without clobbering Twisted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

ROOT = Path(__file__).parent.parent


def test_plugins_are_discovered() -> None:
    """getPlugins(IServiceMaker) yields numd and numd-client."""
    tapnames = {plugin.tapname for plugin in getPlugins(IServiceMaker)}
    assert {"numd", "numd-client"} <= tapnames


def test_plugin_folder_has_no_init() -> None:
    """twisted_plugins/ has no __init__.py, which would replace Twisted's own."""
    assert not (ROOT / "twisted_plugins" / "__init__.py").exists()


def test_wheel_contains_plugin_and_no_plugin_package_init(tmp_path: Path) -> None:
    """A built wheel holds twisted/plugins/numd_plugins.py and no twisted/plugins/__init__.py."""
    # Built from a copy of the sources only: a build/ left by an earlier install would
    # put modules in the wheel that setup.cfg does not list.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            "build", "*.egg-info", ".venv", ".ci-venv", ".git", "bench", "tests", "__pycache__"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("numd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/numd_plugins.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert "numd/counter/protocol.py" in names
    # Every module of the checkout ships: a subpackage missing from setup.cfg's list
    # still passes the editable test install, and breaks `pip install .`.
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "numd").rglob("*.py")}
    assert modules - names == set()
    assert {"numd/http/openapi.json", "numd/http/static/dashboard.js"} <= names
    assert not any(name.startswith("tests/") for name in names)
