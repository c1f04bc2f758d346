"""numd: a number service daemon for counter clients and a shared sorted list, on Twisted."""

from __future__ import annotations


def version() -> str:
    """numd's version: the installed distribution's, else the one in the checkout's setup.cfg.

    The version is written once, in setup.cfg; an installed numd carries it in
    its package metadata, and a checkout run from its folder (``PYTHONPATH=.``)
    reads it from setup.cfg beside the package. (The imports are here, not at
    the top, so that importing any part of numd does not pay for them.)
    """
    from importlib import metadata

    try:
        return metadata.version("numd")
    except metadata.PackageNotFoundError:
        pass
    import configparser
    from pathlib import Path

    setup_cfg = configparser.ConfigParser(interpolation=None)
    setup_cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg", encoding="utf-8")
    return setup_cfg.get("metadata", "version", fallback="unknown")


def version_line() -> str:
    """What ``--version`` prints: numd's version, with Twisted's and Python's."""
    import platform

    import twisted

    return f"numd {version()} (Twisted {twisted.__version__}, Python {platform.python_version()})"


def __getattr__(name: str) -> str:
    """``numd.__version__``, read when asked for (from the same place as `version`)."""
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
