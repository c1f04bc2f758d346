"""Usage mistakes, as a person makes them: `twistd numd`, `numd.tac`, `twistd numd-client` and
`numd-client` print the problem first (the option and the value as typed) and where the help is,
in two lines, and exit with status 2; never the whole help, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from numd.client.tap import main as client_main

from .daemon import ROOT, TWISTD, subprocess_env


def twistd(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run twistd with `args` in `tmp_path`; its exit status and everything it printed."""
    result = subprocess.run(
        [*TWISTD, *args],
        cwd=tmp_path,
        env={**subprocess_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout


@pytest.mark.parametrize(
    "args,first_line",
    [
        (["--seed", "abc"], "twistd numd: --seed: 'abc' is not an integer"),
        (["--frobnicate"], "twistd numd: --frobnicate: no such option"),
        (
            ["--listen", "bogus:1"],
            "twistd numd: --listen: bad endpoint 'bogus:1': Unknown endpoint type: 'bogus'",
        ),
        (
            ["--listen", "tcp:abc"],
            "twistd numd: --listen: bad endpoint 'tcp:abc': "
            "invalid literal for int() with base 10: 'abc'",
        ),
        (
            ["--message-log", "missing/m.log"],
            "twistd numd: --message-log: directory {tmp}/missing (of 'missing/m.log') "
            "does not exist or is not writable",
        ),
        (["--sync", "never"], "twistd numd: --sync: 'never' is not one of everysec, always"),
        (["--quiet-time", "0"], "twistd numd: --quiet-time: must be at least 0.001, not '0'"),
        (["--seed"], "twistd numd: --seed: needs a value"),
    ],
    ids=["seed", "unknown", "endpoint-type", "endpoint-port", "log-dir", "sync", "min", "no-value"],
)
def test_twistd_numd_usage_mistake_is_two_lines_and_status_2(
    tmp_path: Path, args: list[str], first_line: str
) -> None:
    """`twistd -n numd` with a bad option prints the problem, then where the help is, and exits 2."""
    status, output = twistd(tmp_path, "-n", "--pidfile=", "numd", *args)
    assert (status, output) == (
        2,
        first_line.format(tmp=tmp_path) + "\nsee `twistd numd --help`\n",
    )
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.parametrize("plugin", ["numd", "numd-client"])
def test_twistds_own_option_after_the_plugin_says_where_it_goes(
    tmp_path: Path, plugin: str
) -> None:
    """``twistd -n numd-client --connect --logfile client.log`` (the README's old mistake) says
    that --logfile is twistd's and goes before the plugin's name."""
    status, output = twistd(tmp_path, "-n", plugin, "--logfile", "client.log")
    assert (status, output) == (
        2,
        f"twistd {plugin}: --logfile: an option of twistd's, which goes before `{plugin}`\n"
        f"see `twistd {plugin} --help`\n",
    )
    status, output = twistd(tmp_path, "-n", plugin, "-l", "client.log")
    assert output.startswith(f"twistd {plugin}: -l: an option of twistd's, which goes before")


def test_numd_tac_usage_mistake_is_two_lines_without_traceback(tmp_path: Path) -> None:
    """`NUMD_OPTIONS="--seed abc" twistd -ny numd.tac` says what is wrong in two lines, exit 2."""
    tac = str(ROOT / "numd.tac")
    status, output = twistd(tmp_path, "-ny", tac, "--pidfile=", env={"NUMD_OPTIONS": "--seed abc"})
    assert (status, output) == (
        2,
        "numd.tac (NUMD_OPTIONS): --seed: 'abc' is not an integer\nsee `twistd numd --help`\n",
    )
    status, output = twistd(tmp_path, "-ny", tac, "--pidfile=", env={"NUMD_OPTIONS": "--seed '5"})
    assert (status, output) == (
        2,
        "numd.tac: NUMD_OPTIONS: No closing quotation\nsee `twistd numd --help`\n",
    )


def test_twistd_numd_client_usage_mistake_is_two_lines(tmp_path: Path) -> None:
    """`twistd -n numd-client --id abc` names the option and the value, not a type enforcement."""
    status, output = twistd(tmp_path, "-n", "--pidfile=", "numd-client", "--id", "abc")
    assert (status, output) == (
        2,
        "twistd numd-client: --id: 'abc' is not an integer\nsee `twistd numd-client --help`\n",
    )


@pytest.mark.parametrize(
    "args,first_line",
    [
        (["--id", "abc"], "numd-client: --id: 'abc' is not an integer"),
        (["--id", "10001"], "numd-client: --id: must be 0-10000, not '10001'"),
        (["--timeout", "soon"], "numd-client: --timeout: 'soon' is not a number"),
        (["--array", "--count", "0"], "numd-client: --count: must be at least 1, not '0'"),
        (["--parity", "blue"], "numd-client: --parity must be even, odd or random, not 'blue'"),
        (
            ["--server", "tcp:localhost"],
            "numd-client: --server: bad endpoint 'tcp:localhost': "
            "a part is missing or extra (e.g. tcp:127.0.0.1:2004)",
        ),
        (["--conect"], "numd-client: --conect: no such option"),
    ],
)
def test_numd_client_usage_mistake_is_two_lines_and_status_2(
    capsys: pytest.CaptureFixture[str], args: list[str], first_line: str
) -> None:
    """The `numd-client` command prints the problem and where the help is, and exits 2."""
    with pytest.raises(SystemExit) as exited:
        client_main(args)
    assert exited.value.code == 2
    assert capsys.readouterr() == ("", first_line + "\nsee `numd-client --help`\n")


def test_version_is_numds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`numd-client --version` and `twistd numd --version` print numd's version, not Twisted's."""
    import numd

    with pytest.raises(SystemExit) as exited:
        client_main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"numd {numd.version()} (Twisted ")
    assert twistd(tmp_path, "numd", "--version") == (0, out)
