"""The client over TLS: a ``tls:`` server's trusted certificates checked at start, and each way a
TLS connection fails said in one sentence (status line and JSON ``error`` event)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import pytest_twisted
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch, IPAddress_ID, IPAddressMismatch
from twisted.internet import reactor, task
from twisted.internet.endpoints import clientFromString
from twisted.python import usage
from twisted.python.failure import Failure

from numd.client.counter import CounterClient
from numd.client.output import ClientOutput, CounterState
from numd.client.tap import Options
from numd.client.tls import check_trust_roots, tls_failure, trust_roots

from .client_support import Harness
from .test_counter_tls import TlsServer
from .test_loopback import until
from .tls_support import make_ca, make_tls_files

VERIFY_FAILED = SSL.Error([("SSL routines", "", "certificate verify failed")])
UNTRUSTED = "TLS: the server's certificate is not trusted (certificate verify failed)"


def parse(*args: str) -> Options:
    """The client's options, parsed."""
    options = Options()
    options.parseOptions(list(args))
    return options


# -- the trusted certificates, checked at start ----------------------------------------------------


def test_trust_roots_are_read_from_a_tls_endpoint_only() -> None:
    """``trustRoots=`` of a ``tls:`` string, with Twisted's escapes; none for other kinds."""
    assert trust_roots("tls:127.0.0.1:2004:trustRoots=/etc/numd/ca") == "/etc/numd/ca"
    assert trust_roots("tls:host:2004:trustRoots=C\\:\\\\ca:timeout=5") == "C:\\ca"
    assert trust_roots("tls:host:2004") is None
    assert trust_roots("tcp:host:2004:trustRoots=/x") is None


def test_a_tls_server_with_its_ca_directory_parses(tmp_path: Path) -> None:
    """``--server tls:HOST:PORT:trustRoots=DIR`` with the CA's certificate in DIR is accepted."""
    tls = make_tls_files(tmp_path)
    server = f"tls:127.0.0.1:2004:trustRoots={tls.ca_dir}"
    assert parse("--server", server)["server"] == server
    parse("--server", "tls:numd.example:2004")  # the system's CAs


def test_a_ca_file_instead_of_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    """Twisted takes a directory: naming the CA's file says so, instead of an empty OSError."""
    tls = make_tls_files(tmp_path)
    with pytest.raises(usage.UsageError, match=f"trustRoots={tls.ca} is not a directory"):
        parse("--server", f"tls:127.0.0.1:2004:trustRoots={tls.ca}")
    with pytest.raises(usage.UsageError, match="is not a directory"):
        parse("--server", f"tls:127.0.0.1:2004:trustRoots={tmp_path}/missing")


def test_a_directory_without_certificates_is_refused(tmp_path: Path) -> None:
    """A directory with no ``*.pem`` certificate (Twisted would silently trust nothing) is refused;
    one with a certificate among other files is accepted."""
    (tmp_path / "ca.crt").write_text("not read: Twisted reads *.pem only\n")
    (tmp_path / "broken.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"trustRoots={tmp_path} holds no readable"):
        check_trust_roots(f"tls:127.0.0.1:2004:trustRoots={tmp_path}")
    make_ca(tmp_path)
    check_trust_roots(f"tls:127.0.0.1:2004:trustRoots={tmp_path}")


def test_a_missing_client_certificate_file_is_a_usage_error(tmp_path: Path) -> None:
    """A file the endpoint names that cannot be read is a usage error, not a traceback."""
    with pytest.raises(usage.UsageError, match="No such file or directory"):
        parse(
            "--server",
            f"tls:127.0.0.1:2004:certificate={tmp_path}/c.pem:privateKey={tmp_path}/k.pem",
        )


# -- why a TLS connection failed -------------------------------------------------------------------


def test_an_untrusted_certificate_is_said_with_what_to_do() -> None:
    """OpenSSL's ``certificate verify failed`` becomes a sentence pointing at ``trustRoots=``."""
    assert tls_failure(VERIFY_FAILED) == (
        "TLS: the server's certificate is not trusted (certificate verify failed): give the CA "
        "that signed it with trustRoots=DIR in --server, and check that it has not expired"
    )


def test_a_certificate_for_another_name_names_what_was_asked() -> None:
    """service_identity's mismatches name the host or address the client connected to."""
    error = VerificationError(
        errors=[
            DNSMismatch(mismatched_id=DNS_ID("numd.example")),
            IPAddressMismatch(mismatched_id=IPAddress_ID("127.0.0.2")),
        ]
    )
    assert tls_failure(error) == (
        "TLS: the server's certificate is not for numd.example, 127.0.0.2: connect to a name or "
        "address the certificate lists"
    )


def test_another_handshake_failure_suggests_a_port_without_tls() -> None:
    """Any other OpenSSL error keeps OpenSSL's reason and asks whether the port speaks TLS."""
    error = SSL.Error([("SSL routines", "", "wrong version number")])
    assert tls_failure(error) == (
        "TLS: the handshake with the server failed (wrong version number): "
        "is that port a TLS (ssl:) listener?"
    )


def test_other_failures_are_not_tls_ones() -> None:
    """A refused connection or a plain close is left to the client's other messages."""
    assert tls_failure(ConnectionRefusedError()) is None
    assert tls_failure(None) is None


def test_a_tls_refusal_before_registration_is_said_on_stderr() -> None:
    """In status mode a TLS failure before registration is said on stderr, in words."""
    harness = Harness(mode="status")
    harness.client.command("c")
    harness.endpoint.protocol.connectionLost(Failure(VERIFY_FAILED))  # as TLS reports it
    assert (
        "TLS: the server's certificate is not trusted (certificate verify failed)"
        in harness.stderr.getvalue()
    )


# -- over a real TLS loopback ----------------------------------------------------------------------


def tls_client(description: str, stdout: io.StringIO) -> CounterClient:
    """A counter client on the real reactor, printing JSON events to `stdout`, retrying quickly."""
    output = ClientOutput("json", stdout, io.StringIO(), reactor, live=False)
    return CounterClient(
        clientFromString(reactor, description),
        CounterState(77),
        output,
        reactor,
        random.Random(1),
        retry_policy=lambda attempt: 0.05,
    )


@pytest_twisted.ensureDeferred
async def test_counter_client_connects_over_tls_and_is_refused_by_an_untrusted_certificate(
    tmp_path: Path,
) -> None:
    """Trusting the server's CA, the client registers over TLS; trusting another CA, it is refused
    at every attempt with the reason in its JSON events, and never registers."""
    server = await TlsServer(tmp_path).start()
    port = server.port.getHost().port
    trusted_out, refused_out = io.StringIO(), io.StringIO()
    make_ca(tmp_path / "other", "another CA")
    trusted = tls_client(f"tls:127.0.0.1:{port}:trustRoots={server.tls.ca_dir}", trusted_out)
    refused = tls_client(f"tls:127.0.0.1:{port}:trustRoots={tmp_path / 'other'}", refused_out)
    try:
        trusted.connect()
        refused.connect()
        await until(lambda: trusted.state.connected)
        await until(lambda: refused_out.getvalue().count(UNTRUSTED) >= 2)
        assert not refused.state.connected
        assert server.factory.service.clients.keys() == {77}
        assert "TLS:" not in trusted_out.getvalue()
    finally:
        await trusted.shutdown()
        await refused.shutdown()
        await task.deferLater(reactor, 0.1)
        await server.stop()
