"""The systemd units numd ships (contrib/systemd/): systemd accepts them, their ExecStart is a
twistd command line whose numd options parse, and the sockets they pass are the ones it names."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from numd.options import DEFAULT_API_LISTEN, DEFAULT_LISTEN
from numd.tap import makeService

from .daemon import ROOT
from .systemd_support import listening_socket, pretend_inherited

UNITS = ROOT / "contrib" / "systemd"
SERVICE = UNITS / "numd.service"
SOCKETS = [UNITS / "numd.socket", UNITS / "numd-http.socket"]
INSTALLED_TWISTD = "/opt/numd/bin/twistd"
"""Where the shipped unit expects twistd (the operator edits it)."""

ANALYZE = shutil.which("systemd-analyze")


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings: section -> key -> every value, in order (continued lines joined)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    logical = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical, line = "", logical + line
        if line.startswith("["):
            current = sections.setdefault(line.strip()[1:-1], {})
            continue
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start(tmp_path: Path) -> list[str]:
    """numd.service's ExecStart as argv, with the state and logs directories (%S, %L) in `tmp_path`."""
    (line,) = unit(SERVICE)["Service"]["ExecStart"]
    for specifier, directory in (("%S", "state"), ("%L", "logs")):
        (tmp_path / directory / "numd").mkdir(parents=True, exist_ok=True)
        line = line.replace(specifier, str(tmp_path / directory))
    assert "%" not in line
    return shlex.split(line)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.timeout(60)
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds nothing to say about the three units (an unknown key or
    a bad value is only a warning to systemd, so any line about them fails the test)."""
    assert ANALYZE is not None
    twistd = Path(sys.executable).parent / "twistd"
    if not os.access(twistd, os.X_OK):
        pytest.skip(f"no twistd beside {sys.executable} to stand for {INSTALLED_TWISTD}")
    for path in [SERVICE, *SOCKETS]:
        text = path.read_text(encoding="utf-8").replace(INSTALLED_TWISTD, str(twistd))
        (tmp_path / path.name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", "--generators=no", SERVICE.name]
        + [p.name for p in SOCKETS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    output = result.stdout + result.stderr
    assert [line for line in output.splitlines() if "numd" in line] == []
    assert result.returncode == 0, output


def test_exec_start_runs_numd_in_the_foreground_with_options_that_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """twistd's own parser takes ExecStart as systemd runs it: no daemonizing, no pidfile, the
    numd plugin with its options (the database and message log in the unit's directories),
    and the daemon it builds adopts both sockets the socket units pass."""
    from twisted.scripts.twistd import ServerOptions

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    argv = exec_start(tmp_path)
    assert argv[0] == INSTALLED_TWISTD
    inherited = pretend_inherited(monkeypatch)
    sockets = [listening_socket() for _ in SOCKETS]
    try:
        for path, sock in zip(SOCKETS, sockets):
            (name,) = unit(path)["Socket"]["FileDescriptorName"]
            inherited[name] = os.dup(sock.fileno())  # adopting closes its descriptor
        config = ServerOptions()
        config.parseOptions(argv[1:])
        assert (config["nodaemon"], config["pidfile"], config.subCommand) == (True, "", "numd")
        options = config.subOptions
        assert options["db"] == str(tmp_path / "state" / "numd" / "numd.db")
        assert options["message-log"] == str(tmp_path / "logs" / "numd" / "numd-messages.log")
        reactor = MemoryReactorClock()
        daemon = makeService(options, reactor=reactor)
        daemon.privilegedStartService()
        daemon.startService()
        adopted = {fd: factory for fd, _, factory in reactor.adoptedPorts}
        assert adopted == {
            inherited["numd-counter"]: daemon.counter_factory,
            inherited["numd-http"]: daemon.site,
        }
        daemon.stopService()
    finally:
        for sock in sockets:
            sock.close()


def test_the_socket_units_pass_numd_its_default_ports_by_the_names_it_asks_for(
    tmp_path: Path,
) -> None:
    """Each socket unit opens one of numd's default loopback ports, names it as ExecStart's
    systemd: endpoint asks, and activates numd.service, which needs both."""
    argv = exec_start(tmp_path)
    asked = {
        argv[i]: argv[i + 1].split("name=", 1)[1]
        for i in range(len(argv) - 1)
        if argv[i] in ("--listen", "--api-listen")
    }
    defaults = {
        "--listen": DEFAULT_LISTEN.split(":")[1],
        "--api-listen": DEFAULT_API_LISTEN.split(":")[1],
    }
    passed = {}
    for path in SOCKETS:
        socket_unit = unit(path)["Socket"]
        ((listen,), (name,), (service,)) = (
            socket_unit["ListenStream"],
            socket_unit["FileDescriptorName"],
            socket_unit["Service"],
        )
        assert service == SERVICE.name
        passed[name] = listen
    assert {option: passed[name] for option, name in asked.items()} == {
        option: f"127.0.0.1:{port}" for option, port in defaults.items()
    }
    service_unit = unit(SERVICE)
    assert service_unit["Unit"]["Requires"] == [" ".join(p.name for p in SOCKETS)]


def test_the_service_is_notify_type_with_a_watchdog_reload_and_hardening() -> None:
    """Type=notify from the main process, a watchdog, SIGHUP on reload (numd reopens its logs),
    a dedicated user with its own state and logs directories, and a confined file system."""
    settings = {key: values[-1] for key, values in unit(SERVICE)["Service"].items()}
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] == "30s"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (settings["User"], settings["StateDirectory"], settings["LogsDirectory"]) == (
        "numd",
        "numd",
        "numd",
    )
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert settings[key] == value, key
