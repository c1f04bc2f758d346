"""numd: a number service daemon for counter clients and a shared sorted list, on Twisted."""

__version__ = "0.1.0"
