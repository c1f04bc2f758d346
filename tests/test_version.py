"""numd's version (`numd.version`): written once, in setup.cfg; read from the installed package's
metadata, else from the checkout's setup.cfg."""

from __future__ import annotations

import configparser
from importlib import metadata

import pytest

import numd

from .daemon import ROOT


def setup_cfg_version() -> str:
    """The version setup.cfg gives."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser.get("metadata", "version")


def test_version_is_the_package_metadatas(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed numd says the version its distribution was built with."""
    monkeypatch.setattr(metadata, "version", lambda name: {"numd": "7.8.9"}[name])
    assert numd.version() == numd.__version__ == "7.8.9"


def test_without_metadata_the_version_is_setup_cfgs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout that is not installed reads its version from setup.cfg."""

    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert numd.version() == setup_cfg_version()
    assert numd.version_line().startswith(f"numd {setup_cfg_version()} (Twisted ")
