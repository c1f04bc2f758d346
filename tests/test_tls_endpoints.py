"""``ssl:`` listeners in `twistd numd`'s options: accepted like TCP ones, and every unusable key or
certificate file stops start-up with one line naming the option and the file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import _parse as twisted_parse
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python import usage

from numd.options import Options, endpoint_is_loopback
from numd.tap import makeService
from numd.tls.endpoints import TlsFileError, check_server_files, split_endpoint

from .daemon import TWISTD, free_port, subprocess_env
from .tls_support import TlsFiles, make_tls_files


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    """A CA and a server key and certificate it signed, for this test only."""
    return make_tls_files(tmp_path / "tls")


def parse_in(tmp_path: Path, *args: str) -> Options:
    """Options as twistd parses them, with the message log in `tmp_path` and no database file."""
    options = Options()
    options.parseOptions(["--message-log", str(tmp_path / "m.log"), "--db", ":memory:", *args])
    return options


def refusal(tmp_path: Path, *args: str) -> str:
    """The usage error `args` give."""
    with pytest.raises(usage.UsageError) as caught:
        parse_in(tmp_path, *args)
    return str(caught.value)


# -- the endpoint string, as Twisted splits it ------------------------------------------------------


@given(st.text(alphabet="ab:=\\ ", max_size=24))
def test_endpoint_strings_are_split_as_twisted_splits_them(description: str) -> None:
    """Positional and named parameters, escapes included, come out as Twisted's own parser makes them."""
    try:
        expected = twisted_parse(description)
    except RuntimeError:  # a trailing lone backslash stops Twisted's tokenizer (StopIteration)
        return
    assert split_endpoint(description) == expected


# -- ssl: listeners are accepted like tcp: ones -----------------------------------------------------


def test_ssl_listeners_parse_with_the_backlog_and_the_loopback_rule(
    tmp_path: Path, tls: TlsFiles
) -> None:
    """An ``ssl:`` counter listener on 127.0.0.1 gets numd's listen backlog; the API may be TLS too;
    both count as loopback, so no token is needed, and makeService binds them with TLS."""
    counter = tls.ssl_endpoint(2004)
    api = tls.ssl_endpoint(8443)
    options = parse_in(tmp_path, "--listen", counter, "--api-listen", api)
    assert options["listen"] == [counter + ":backlog=4096"]
    assert options["api-listen"] == api
    reactor = MemoryReactorClock()
    daemon = makeService(options, reactor=reactor)
    daemon.privilegedStartService()
    try:
        bound = {(port, interface) for port, _, _, _, interface in reactor.sslServers}
        assert bound == {(2004, "127.0.0.1"), (8443, "127.0.0.1")}
        assert [backlog for _, _, _, backlog, _ in reactor.sslServers] == [4096, 50]
        assert reactor.tcpServers == []
    finally:
        daemon.stopService()


def test_ssl_listener_beyond_loopback_needs_a_token_or_allow_remote(
    tmp_path: Path, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interface of an ``ssl:`` endpoint decides, as for ``tcp:``: TLS is no authentication."""
    monkeypatch.delenv("NUMD_API_TOKEN", raising=False)
    assert "no authentication" in refusal(tmp_path, "--listen", tls.ssl_endpoint(2004, "0.0.0.0"))
    no_interface = f"ssl:2004:privateKey={tls.key}:certKey={tls.cert}"
    assert "no authentication" in refusal(tmp_path, "--listen", no_interface)
    api = tls.ssl_endpoint(8443, "0.0.0.0")
    assert "set an API token" in refusal(tmp_path, "--api-listen", api)
    parse_in(tmp_path, "--listen", no_interface, "--api-listen", api, "--allow-remote")
    assert endpoint_is_loopback(tls.ssl_endpoint(1, "localhost"))
    assert not endpoint_is_loopback(no_interface)


def test_positional_ssl_parameters_are_checked_too(tmp_path: Path, tls: TlsFiles) -> None:
    """``ssl:PORT:KEY:CERT`` names its files by position; a missing one is named all the same."""
    check_server_files(f"ssl:2004:{tls.key}:{tls.cert}")
    with pytest.raises(TlsFileError, match=f"the TLS certificate {tmp_path}/nope.pem \\(certKey="):
        check_server_files(f"ssl:2004:{tls.key}:{tmp_path}/nope.pem")


# -- every unusable file is one line naming the option and the file ----------------------------------


def test_a_missing_key_names_the_option_and_the_file(tmp_path: Path, tls: TlsFiles) -> None:
    """A private key that is not there stops start-up with one line, not a FileNotFoundError."""
    missing = tmp_path / "missing-key.pem"
    endpoint = f"ssl:2004:privateKey={missing}:certKey={tls.cert}:interface=127.0.0.1"
    message = refusal(tmp_path, "--listen", endpoint)
    assert message == (
        f"--listen: cannot read the TLS private key {missing} (privateKey=): "
        "No such file or directory"
    )


@pytest.mark.parametrize("option", ["--listen", "--api-listen"])
def test_a_missing_certificate_names_the_option(tmp_path: Path, tls: TlsFiles, option: str) -> None:
    """The certificate file is checked for the HTTP API's listener as for the counter's."""
    endpoint = f"ssl:1:privateKey={tls.key}:certKey={tmp_path}/gone.pem:interface=127.0.0.1"
    assert refusal(tmp_path, option, endpoint) == (
        f"{option}: cannot read the TLS certificate {tmp_path}/gone.pem (certKey=): "
        "No such file or directory"
    )


def test_no_private_key_given_names_twisteds_default(tmp_path: Path) -> None:
    """``ssl:`` with no ``privateKey=`` reads server.pem from the working directory: the message says so."""
    message = refusal(tmp_path, "--listen", "ssl:2004:interface=127.0.0.1")
    assert message == (
        "--listen: cannot read the TLS private key server.pem (no privateKey= was given, "
        "so Twisted reads server.pem): No such file or directory"
    )


@pytest.mark.skipif(os.getuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_names_the_file(tmp_path: Path, tls: TlsFiles) -> None:
    """A key numd's user may not read is named, with the reason."""
    tls.key.chmod(0)
    message = refusal(tmp_path, "--listen", tls.ssl_endpoint(2004))
    assert message == (
        f"--listen: cannot read the TLS private key {tls.key} (privateKey=): Permission denied"
    )


def test_a_directory_is_not_a_key(tmp_path: Path, tls: TlsFiles) -> None:
    """A path that cannot be read as a file (here a directory) is named with the system's reason."""
    endpoint = f"ssl:2004:privateKey={tmp_path}:certKey={tls.cert}:interface=127.0.0.1"
    assert refusal(tmp_path, "--listen", endpoint) == (
        f"--listen: cannot read the TLS private key {tmp_path} (privateKey=): Is a directory"
    )


def test_files_that_hold_no_key_or_no_certificate(tmp_path: Path, tls: TlsFiles) -> None:
    """A key file with no PEM key, or a certificate file with no certificate, is named."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(TlsFileError, match=f"{garbage} or {tls.cert} holds no PEM private key"):
        check_server_files(f"ssl:1:privateKey={garbage}:certKey={tls.cert}")
    with pytest.raises(TlsFileError, match=f"{tls.key} holds no PEM certificate"):
        check_server_files(f"ssl:1:privateKey={tls.key}")
    with pytest.raises(TlsFileError, match=f"{tls.key} or {garbage} holds no PEM certificate"):
        check_server_files(f"ssl:1:privateKey={tls.key}:certKey={garbage}")


def test_one_file_holding_key_and_certificate_is_enough(tmp_path: Path, tls: TlsFiles) -> None:
    """As Twisted allows: ``privateKey=`` alone naming a file with the certificate and the key."""
    both = tmp_path / "server.pem"
    both.write_bytes(tls.cert.read_bytes() + tls.key.read_bytes())
    check_server_files(f"ssl:1:privateKey={both}")
    serverFromString(MemoryReactor(), f"ssl:1:privateKey={both}")


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(
    tmp_path: Path, tls: TlsFiles
) -> None:
    """An encrypted key would make OpenSSL ask for a passphrase on the terminal: it is refused
    with what to do instead."""
    key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    message = refusal(
        tmp_path,
        "--listen",
        f"ssl:2004:privateKey={encrypted}:certKey={tls.cert}:interface=127.0.0.1",
    )
    assert message.startswith(f"--listen: the private key in {encrypted} is encrypted")
    assert f"openssl pkey -in {encrypted} -out KEY" in message


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, tls: TlsFiles) -> None:
    """A key that does not belong to the certificate is named with both files."""
    other = make_tls_files(tmp_path / "other")
    endpoint = f"ssl:2004:privateKey={other.key}:certKey={tls.cert}:interface=127.0.0.1"
    assert refusal(tmp_path, "--listen", endpoint) == (
        f"--listen: the private key in {other.key} does not belong to the certificate in {tls.cert}"
    )


def test_chain_dh_parameters_and_method_are_checked(tmp_path: Path, tls: TlsFiles) -> None:
    """``extraCertChain=`` must hold certificates, ``dhParameters=`` be readable, ``sslmethod=``
    name an OpenSSL method; good ones pass."""
    base = f"ssl:1:privateKey={tls.key}:certKey={tls.cert}"
    check_server_files(f"{base}:extraCertChain={tls.ca}:sslmethod=TLS_METHOD")
    with pytest.raises(TlsFileError, match=f"{tls.key} holds no PEM certificate"):
        check_server_files(f"{base}:extraCertChain={tls.key}")
    with pytest.raises(TlsFileError, match="cannot read the certificate chain"):
        check_server_files(f"{base}:extraCertChain={tmp_path}/none.pem")
    with pytest.raises(TlsFileError, match="cannot read the Diffie-Hellman parameters"):
        check_server_files(f"{base}:dhParameters={tmp_path}/dh.pem")
    with pytest.raises(TlsFileError, match="sslmethod=TLS_NOPE is not an OpenSSL method"):
        check_server_files(f"{base}:sslmethod=TLS_NOPE")


def test_other_endpoints_are_not_checked(tmp_path: Path) -> None:
    """Only ``ssl:`` endpoints name key files; a ``tcp:`` one with a stray parameter is left to Twisted."""
    check_server_files("tcp:2004:interface=127.0.0.1")
    check_server_files("unix:/tmp/numd.sock")
    check_server_files(f"tcp:1:privateKey={tmp_path}/none")


def test_the_legacy_array_listener_refuses_tls(tmp_path: Path, tls: TlsFiles) -> None:
    """The older server's array clients speak plain TCP: an ``ssl:`` legacy listener is refused."""
    assert refusal(tmp_path, "--legacy-array-listen", tls.ssl_endpoint(6000)) == (
        "--legacy-array-listen: the older server's array clients do not speak TLS; "
        "give a tcp: endpoint"
    )


def test_twistd_says_which_key_file_is_missing_without_a_traceback(tmp_path: Path) -> None:
    """A real ``twistd -n numd`` with a missing key ends with the one line, and no traceback."""
    missing = tmp_path / "missing.pem"
    endpoint = f"ssl:{free_port()}:privateKey={missing}:interface=127.0.0.1"
    done = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "numd", "--db", ":memory:", "--listen", endpoint],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    assert (
        f"--listen: cannot read the TLS private key {missing} (privateKey=): "
        "No such file or directory" in output
    )
