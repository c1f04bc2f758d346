"""The files of an ``ssl:`` server endpoint, checked before numd starts: each problem is one line naming it.

Twisted's ``ssl:`` endpoint reads its private key and certificate while the
endpoint string is parsed. When one is missing, unreadable, not PEM, encrypted
or does not match the other, the parser raises whatever the layer below
raised: a ``FileNotFoundError`` that does not say which option it came from, an
``OpenSSL.crypto.Error`` such as ``[('DECODER routines', '', 'unsupported')]``,
or, for an encrypted key, OpenSSL asking for a passphrase on the terminal. So
`check_tls_listeners` reads and decodes the files first, the way Twisted will
(the certificate file, then the key file, searched as one PEM text), and turns
each problem into a usage error that names the option, the parameter and the
file, before twistd daemonizes and before Twisted's parser runs.

The legacy array listener takes no TLS at all (`check_tls_listeners` says why).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from twisted.python import usage

SSL_PARAMETERS = (
    "port",
    "privateKey",
    "certKey",
    "sslmethod",
    "interface",
    "backlog",
    "extraCertChain",
    "dhParameters",
)
"""The parameters of Twisted's ``ssl:`` server endpoint, in the order it takes them positionally."""
DEFAULT_PRIVATE_KEY = "server.pem"
"""The key (and certificate) file Twisted's ``ssl:`` endpoint reads when none is named."""


class TlsFileError(ValueError):
    """A file an ``ssl:`` endpoint names cannot be used; the message says which and why."""


def split_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """A Twisted endpoint string's positional and named parameters, as `serverFromString` splits it.

    The first positional one is the endpoint's kind. A backslash escapes the
    next character (``\\:`` is a colon in a value); after ``name=``, only a
    colon ends the value.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    field = [""]
    current = ""
    separators = ":="
    chars = iter(description)
    for char in chars:
        if char in separators:
            field[-1] = current
            current = ""
            if char == "=":
                field.append("")
                separators = ":"
            else:
                _add(field, args, kwargs)
                field = [""]
                separators = ":="
        elif char == "\\":
            current += next(chars, "")
        else:
            current += char
    field[-1] = current
    _add(field, args, kwargs)
    return args, kwargs


def _add(field: list[str], args: list[str], kwargs: dict[str, str]) -> None:
    if len(field) == 1:
        args.append(field[0])
    else:
        kwargs[field[0]] = field[1]


def ssl_parameters(description: str) -> dict[str, str] | None:
    """The parameters of an ``ssl:`` server endpoint string by name; None for any other kind."""
    args, kwargs = split_endpoint(description)
    if args[0] != "ssl":
        return None
    return {**dict(zip(SSL_PARAMETERS, args[1:])), **kwargs}


def check_server_files(description: str) -> None:
    """Raise `TlsFileError` if `description` is an ``ssl:`` endpoint whose files Twisted could not use.

    Checked: the private key (``privateKey=``, default ``server.pem``) and the
    certificate (``certKey=``, default the key's file) can be read, hold a PEM
    key that is not encrypted and a PEM certificate, and belong together; a
    certificate chain (``extraCertChain=``) holds certificates; a
    Diffie-Hellman parameters file (``dhParameters=``) can be read; an
    ``sslmethod=`` is a method OpenSSL has. Other endpoints pass unchecked.
    """
    parameters = ssl_parameters(description)
    if parameters is None:
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from OpenSSL import SSL

    key_path = parameters.get("privateKey", DEFAULT_PRIVATE_KEY)
    cert_path = parameters.get("certKey") or key_path
    key_data = _read(key_path, "the TLS private key", "privateKey", "privateKey" in parameters)
    cert_data = (
        key_data if cert_path == key_path else _read(cert_path, "the TLS certificate", "certKey")
    )
    # Twisted searches the certificate file, then the key file, as one text.
    both = cert_data + b"\n" + key_data
    where = key_path if cert_path == key_path else f"{key_path} or {cert_path}"
    try:
        key = serialization.load_pem_private_key(both, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise TlsFileError(
            f"the private key in {key_path} is encrypted, and numd cannot ask for its passphrase: "
            f"store it decrypted (openssl pkey -in {key_path} -out KEY), readable by numd's user only"
        ) from None
    except ValueError:
        raise TlsFileError(f"{where} holds no PEM private key (privateKey=)") from None
    try:
        certificate = x509.load_pem_x509_certificates(both)[0]
    except ValueError:
        raise TlsFileError(f"{where} holds no PEM certificate (certKey=)") from None
    if _public_key(certificate.public_key()) != _public_key(key.public_key()):
        raise TlsFileError(
            f"the private key in {key_path} does not belong to the certificate in {cert_path}"
        )
    chain_path = parameters.get("extraCertChain")
    if chain_path is not None:
        chain = _read(chain_path, "the certificate chain", "extraCertChain")
        try:
            x509.load_pem_x509_certificates(chain)
        except ValueError:
            raise TlsFileError(f"{chain_path} holds no PEM certificate (extraCertChain=)") from None
    if "dhParameters" in parameters:
        _read(parameters["dhParameters"], "the Diffie-Hellman parameters", "dhParameters")
    method = parameters.get("sslmethod")
    if method is not None and not (method.endswith("_METHOD") and hasattr(SSL, method)):
        raise TlsFileError(f"sslmethod={method} is not an OpenSSL method (e.g. TLS_METHOD)")


def _public_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: str, what: str, parameter: str, named: bool = True) -> bytes:
    """The bytes of `path`, or a `TlsFileError` saying which file could not be read and why.

    `what` it holds and the endpoint `parameter` that names it go in the
    message; `named` is False when Twisted's default file is read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        given = f"{parameter}=" if named else f"no {parameter}= was given, so Twisted reads {path}"
        raise TlsFileError(f"cannot read {what} {path} ({given}): {e.strerror}") from None


def listener_endpoints(config: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Every server endpoint of ``twistd numd``'s options, with the option that gave it."""
    for description in config["listen"]:
        yield "--listen", description
    yield "--api-listen", config["api-listen"]
    if config["legacy-array-listen"] is not None:
        yield "--legacy-array-listen", config["legacy-array-listen"]


def check_tls_listeners(config: Mapping[str, Any]) -> None:
    """Stop with a usage error naming the option and the file if an ``ssl:`` listener's files are
    unusable, or if the legacy array listener is asked for TLS.

    The older server's array clients speak plain TCP only; and that listener
    refuses a connection past its cap by building no protocol, which a TLS
    listener cannot take (Twisted's wrapper fails on it, logs a traceback and
    leaves the connection open).
    """
    for option, description in listener_endpoints(config):
        if option == "--legacy-array-listen" and ssl_parameters(description) is not None:
            raise usage.UsageError(
                f"{option}: the older server's array clients do not speak TLS; give a tcp: endpoint"
            )
        try:
            check_server_files(description)
        except TlsFileError as e:
            raise usage.UsageError(f"{option}: {e}") from None
