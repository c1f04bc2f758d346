"""The command lines of the operator docs parse: every ``twistd ... numd ...`` of docs/migrating.md and
docs/tls.md through twistd's own option parser (numd's plugin included), every ``numd-client ...`` through
the client's, so a renamed option or a wrong argument in a doc fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from twisted.scripts._twistd_unix import ServerOptions

from numd.client.tap import Options as ClientOptions
from numd.options import Options as NumdOptions

from .tls_support import make_tls_files

DOCS = Path(__file__).resolve().parent.parent / "docs"
ETC = "/etc/numd"
"""The directory the docs keep numd's files in; the test makes its own and puts it there."""


def commands(doc: str) -> list[str]:
    """Every command of the ``sh`` blocks of `doc`, continuation lines joined, comments dropped."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command and not command.startswith("#"):
                found.append(command)
    return found


def numd_commands(doc: str) -> list[str]:
    """The ``twistd ... numd ...`` command lines of `doc`."""
    return [c for c in commands(doc) if c.startswith("twistd ") and " numd " in c]


def client_commands(doc: str) -> list[str]:
    """The ``numd-client ...`` command lines of `doc`."""
    return [c for c in commands(doc) if c.startswith("numd-client ")]


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The docs' /etc/numd, made in `tmp_path`: a TLS key, certificate and CA, and an API token;
    the working directory is `tmp_path` (for the files numd writes there)."""
    directory = tmp_path / "etc" / "numd"
    tls = make_tls_files(directory / "tls")
    tls.ca.rename(directory / "tls" / "ca.pem")
    (directory / "ca").mkdir()
    (directory / "ca" / "ca.pem").write_bytes((directory / "tls" / "ca.pem").read_bytes())
    (directory / "token").write_text("s3cret-token\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NUMD_API_TOKEN", raising=False)
    return directory


def parse_twistd(command: str, etc: Path) -> NumdOptions:
    """numd's options as twistd parses `command` (with the docs' /etc/numd in the test's place)."""
    argv = shlex.split(command.replace(ETC, str(etc)))
    assert argv[0] == "twistd"
    config = ServerOptions()
    config.parseOptions(argv[1:])
    assert config.subCommand == "numd"
    options = config.subOptions
    assert isinstance(options, NumdOptions)
    return options


def test_the_docs_hold_the_commands_this_test_parses() -> None:
    """The extraction finds each command line the docs show (so none is skipped unseen)."""
    assert len(numd_commands("migrating.md")) == 4
    assert len(numd_commands("tls.md")) == 1
    assert len(client_commands("tls.md")) == 2


@pytest.mark.parametrize("command", numd_commands("migrating.md"))
def test_every_migration_command_parses(command: str, etc: Path) -> None:
    """Each drop-in command line of docs/migrating.md is accepted by twistd and numd's options,
    with the legacy options and the in-memory state it promises."""
    options = parse_twistd(command, etc)
    assert options["db"] == ":memory:"
    if "--legacy-array-listen" in command:
        assert options["legacy-array-listen"] == "tcp:6000:interface=127.0.0.1"
        assert options["legacy-routes"]
        assert options["api-listen"].startswith("tcp:12345:")
    if "interface=127.0.1.1" in command:
        assert options["listen"] == ["tcp:2004:interface=127.0.1.1:backlog=4096"]


def test_the_remote_migration_needs_its_token(etc: Path) -> None:
    """The remote variant of docs/migrating.md reads its token file, and allows the host name."""
    (command,) = [c for c in numd_commands("migrating.md") if "--api-token-file" in c]
    options = parse_twistd(command, etc)
    assert options["api-token"] == "s3cret-token"
    assert options["allowed-host"] == ["myhost"]


@pytest.mark.parametrize("command", numd_commands("tls.md"))
def test_the_tls_daemon_command_parses(command: str, etc: Path) -> None:
    """docs/tls.md's daemon command checks and accepts the key and certificate it names."""
    options = parse_twistd(command, etc)
    assert options["listen"][0].startswith("ssl:2004:privateKey=")
    assert options["api-listen"].startswith("ssl:8443:privateKey=")


@pytest.mark.parametrize("command", client_commands("tls.md"))
def test_the_tls_client_commands_parse(command: str, etc: Path) -> None:
    """docs/tls.md's client commands name a tls: server, and a trustRoots= directory that holds
    the CA's certificate."""
    options = ClientOptions()
    options.parseOptions(shlex.split(command.replace(ETC, str(etc)))[1:])
    assert options["server"].startswith("tls:")
