"""The client over TLS: a ``tls:`` server's trusted certificates checked at start, and TLS failures in words.

``numd-client --server tls:HOST:PORT`` is Twisted's TLS client endpoint: it
accepts the server's certificate only if a trusted CA signed it (the system's
CAs, or the ``*.pem`` certificates in the directory ``trustRoots=DIR``) and it
names HOST (`twisted.internet.ssl.optionsForClientTLS`). Twisted takes a
``trustRoots=`` that is a file, or missing, with an empty ``OSError``, and an
empty directory silently; `check_trust_roots` says what is wrong before the
client starts.

A refused certificate ends the connection with an OpenSSL error such as
``[('SSL routines', '', 'certificate verify failed')]``, or a
`service_identity` error listing mismatched names: `tls_failure` turns those
into one sentence that says what to do, for the status line and the JSON
``error`` event.
"""

from __future__ import annotations

import os
import re

_TRUST_ROOTS = re.compile(r"(?:^|(?<!\\):)trustRoots=((?:\\.|[^:\\])*)")


def trust_roots(description: str) -> str | None:
    """The ``trustRoots=`` directory of a ``tls:`` client endpoint string, or None."""
    if not description.startswith("tls:"):
        return None
    match = _TRUST_ROOTS.search(description)
    if match is None:
        return None
    return re.sub(r"\\(.)", r"\1", match.group(1))


def check_trust_roots(description: str) -> None:
    """Raise `ValueError` if a ``tls:`` endpoint's ``trustRoots=`` is no directory of PEM certificates.

    Twisted reads every file of that directory whose name ends in ``.pem``
    and keeps those that hold a certificate.
    """
    directory = trust_roots(description)
    if directory is None:
        return
    if not os.path.isdir(directory):
        raise ValueError(
            f"trustRoots={directory} is not a directory: put the CA's certificate "
            "(a .pem file) in a directory and name the directory"
        )
    from cryptography import x509

    for name in sorted(os.listdir(directory)):
        if not name.lower().endswith(".pem"):
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError):
            continue
        return
    raise ValueError(f"trustRoots={directory} holds no readable *.pem certificate")


def tls_failure(error: BaseException | None) -> str | None:
    """Why a TLS connection failed, in one sentence; None if `error` is no TLS failure."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    if isinstance(error, VerificationError):
        names = ", ".join(_mismatched(mismatch) for mismatch in error.errors)
        return (
            f"TLS: the server's certificate is not for {names}: connect to a name or "
            "address the certificate lists"
        )
    if not isinstance(error, SSL.Error):
        return None
    reasons = _reasons(error)
    if "certificate verify failed" in reasons:
        return (
            "TLS: the server's certificate is not trusted (certificate verify failed): "
            "give the CA that signed it with trustRoots=DIR in --server, and check that "
            "it has not expired"
        )
    return (
        f"TLS: the handshake with the server failed ({reasons or error}): "
        "is that port a TLS (ssl:) listener?"
    )


def _reasons(error: BaseException) -> str:
    """OpenSSL's reasons, e.g. ``certificate verify failed``, from its list of (library, function, reason)."""
    found = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(entry, tuple) and entry:
            found.append(str(entry[-1]))
    return "; ".join(found)


def _mismatched(mismatch: object) -> str:
    """The name or address a `service_identity` mismatch is about."""
    identity = getattr(mismatch, "mismatched_id", None)
    for field in ("hostname", "ip", "uri", "srv"):
        value = getattr(identity, field, None)
        if value is not None:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return str(identity if identity is not None else mismatch)
