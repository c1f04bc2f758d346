"""numd under systemd: readiness, status and watchdog notifications, and inherited sockets.

Notifications follow systemd's ``sd_notify`` protocol, which is small enough to
speak with the standard library rather than depend on libsystemd or a binding:
one datagram of newline-separated ``KEY=value`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` names a socket in the abstract
namespace). Nothing is sent, and nothing fails, when that variable is unset: the
same daemon runs under a terminal, an init script or systemd.

`SystemdNotifier` is the last service of numd's tree, so its ``startService``
comes after the store loaded the database and after every listener bound (both
in ``privilegedStartService``) and started; it says ``READY=1`` only once the
reactor runs and every readiness check of ``/readyz`` passes. Its watchdog pings
(``WATCHDOG=1``) come from a `LoopingCall` on the reactor, so a reactor that is
stuck stops them and systemd restarts numd.

Socket activation itself is Twisted's ``systemd:`` server endpoint, which adopts
a descriptor numd inherited (``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``).
`inherited_socket` finds that descriptor for a ``systemd:`` endpoint string and
reads what it is actually bound to, so numd can judge an inherited socket as it
judges one it binds itself (loopback or not), and explain a missing one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from numd.timers import cancel

__all__ = [
    "STATUS_INTERVAL",
    "InheritedSocket",
    "InheritedSocketError",
    "Notifier",
    "SystemdNotifier",
    "inherited_is_local",
    "inherited_socket",
    "is_systemd_endpoint",
    "serving_status",
    "watchdog_interval",
]

STATUS_INTERVAL = 10.0
"""Seconds between two looks at numd's status line (sent to systemd only when it changed)."""

READY_RETRY = 0.1
"""Seconds between two readiness checks while a listener is not up yet."""


# -- sd_notify ---------------------------------------------------------------------------


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (`address`); does nothing without one.

    Each message is one datagram from a fresh non-blocking socket: a service
    manager that does not read its socket costs numd a dropped notification,
    never a blocked reactor. A failure is logged once, until a send succeeds.
    """

    log = Logger()

    def __init__(self, address: str | None) -> None:
        self.address = address
        """The socket's address as `socket` takes it (abstract names start with NUL), or None."""
        self._failing: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` in `environ` (the process environment by default)."""
        value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        if value.startswith("@"):
            value = "\0" + value[1:]
        return cls(value)

    def send(self, *fields: str) -> bool:
        """Send `fields` (``KEY=value`` lines) as one message; whether it was sent."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(data, self.address)
        except OSError as e:
            reason = f"{e.strerror or e}"
            if reason != self._failing:
                self._failing = reason
                self.log.warn(
                    "cannot notify systemd at {address}: {reason}",
                    address=self.address.replace("\0", "@", 1),
                    reason=reason,
                )
            return False
        self._failing = None
        return True


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two watchdog pings (half of ``$WATCHDOG_USEC``), or None for no watchdog.

    None too when ``$WATCHDOG_PID`` names another process (the watchdog is not ours)
    or the value is not a positive integer.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec or (owner and owner != str(pid)):
        return None
    try:
        microseconds = int(usec)
    except ValueError:
        return None
    if microseconds <= 0:
        return None
    return microseconds / 2 / 1_000_000


class SystemdNotifier(Service):
    """Tells systemd when numd is ready, what it is doing, that it is alive, and when it stops.

    - ``READY=1`` (with a ``STATUS=`` line) once the reactor runs and `ready()`
      is true: add this service after the store and the listeners, so it starts
      after they did.
    - ``STATUS=`` with `status()` every `status_interval` seconds, when it changed.
    - ``WATCHDOG=1`` every `watchdog` seconds from start to stop, on `clock`.
    - ``STOPPING=1`` as shutdown begins (before the other services stop and the
      live connections close), or at the latest when this service stops.
    """

    log = Logger()
    name = "systemd-notify"

    def __init__(
        self,
        clock: IReactorTime,
        notifier: Notifier,
        *,
        ready: Callable[[], bool],
        status: Callable[[], str],
        watchdog: float | None = None,
        status_interval: float = STATUS_INTERVAL,
    ) -> None:
        self._clock = clock
        self.notifier = notifier
        self._ready = ready
        self._status = status
        self.watchdog = watchdog
        """Seconds between two watchdog pings, or None."""
        self.status_interval = status_interval
        self.is_ready = False
        """Whether READY=1 was sent."""
        self._last_status: str | None = None
        self._stopping = False
        self._pending: IDelayedCall | None = None
        self._trigger: tuple[IReactorCore, object] | None = None
        self._pings = LoopingCall(self.notifier.send, "WATCHDOG=1")
        self._pings.clock = clock
        self._updates = LoopingCall(self._update_status)
        self._updates.clock = clock

    @classmethod
    def from_environment(
        cls,
        clock: IReactorTime,
        *,
        ready: Callable[[], bool],
        status: Callable[[], str],
        environ: Mapping[str, str] | None = None,
        pid: int | None = None,
    ) -> SystemdNotifier | None:
        """The notifier ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` ask for, or None when
        systemd waits for no notification (``$NOTIFY_SOCKET`` unset)."""
        environ = os.environ if environ is None else environ
        notifier = Notifier.from_environment(environ)
        if notifier.address is None:
            return None
        watchdog = watchdog_interval(environ, os.getpid() if pid is None else pid)
        return cls(clock, notifier, ready=ready, status=status, watchdog=watchdog)

    def startService(self) -> None:
        """Start the watchdog pings, and check readiness once the reactor runs."""
        super().startService()
        self._stopping = False
        if self.watchdog is not None:
            self._pings.start(self.watchdog, now=True)
        self._pending = self._clock.callLater(0, self._check_ready)
        if IReactorCore.providedBy(self._clock):
            core = cast(IReactorCore, self._clock)
            trigger = core.addSystemEventTrigger("before", "shutdown", self._shutdown_begins)
            self._trigger = (core, trigger)

    def stopService(self) -> None:
        """Say STOPPING=1 (unless shutdown said it already) and stop every timer."""
        super().stopService()
        cancel(self._pending)
        self._pending = None
        for loop in (self._pings, self._updates):
            if loop.running:
                loop.stop()
        if self._trigger is not None:  # not fired: the service stops without a shutdown
            core, trigger = self._trigger
            self._trigger = None
            core.removeSystemEventTrigger(trigger)
        self.stopping()

    def _shutdown_begins(self) -> None:
        self._trigger = None
        self.stopping()

    def stopping(self) -> None:
        """Tell systemd numd is stopping (once per run)."""
        if self._stopping:
            return
        self._stopping = True
        self.notifier.send("STOPPING=1", "STATUS=stopping")

    def _check_ready(self) -> None:
        self._pending = None
        if not self._ready():
            self._pending = self._clock.callLater(READY_RETRY, self._check_ready)
            return
        self.is_ready = True
        self._last_status = self._status()
        if self.notifier.send("READY=1", f"STATUS={self._last_status}"):
            self.log.info("told systemd that numd is ready")
        self._updates.start(self.status_interval, now=False)

    def _update_status(self) -> None:
        status = self._status()
        if status != self._last_status:
            self._last_status = status
            self.notifier.send(f"STATUS={status}")


def _counted(count: int, thing: str) -> str:
    return f"{count} {thing}" if count == 1 else f"{count} {thing}s"


def serving_status(
    connections: Callable[[], int],
    values: Callable[[], int],
    degraded_checks: Mapping[str, Callable[[], bool]] | None = None,
) -> Callable[[], str]:
    """The status line ``systemctl status numd`` shows: counter clients, list size, and
    which of `degraded_checks` (those of ``/readyz``) fail, if any."""
    checks = degraded_checks if degraded_checks is not None else {}

    def status() -> str:
        line = f"serving {_counted(connections(), 'counter client')}, {_counted(values(), 'value')}"
        failing = [name for name, check in sorted(checks.items()) if not check()]
        if failing:
            line += f"; degraded: {', '.join(failing)}"
        return line

    return status


# -- inherited sockets -----------------------------------------------------------------------


class InheritedSocketError(ValueError):
    """A ``systemd:`` endpoint names no usable inherited socket; the message says why."""


@dataclass(frozen=True)
class InheritedSocket:
    """A listening socket numd inherited, as a ``systemd:`` endpoint names it."""

    fileno: int
    family: socket.AddressFamily
    address: Any
    """What ``getsockname()`` says: (host, port[, ...]) or a path (an AF_UNIX socket)."""

    @property
    def is_local(self) -> bool:
        """Whether only this host can connect: a loopback address or an AF_UNIX socket."""
        if self.family == socket.AF_UNIX:
            return True
        host = str(self.address[0]).split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def describe(self) -> str:
        """The address as a person reads it: ``127.0.0.1:2004``, ``[::1]:2004`` or a path."""
        if self.family == socket.AF_UNIX:
            path = self.address
            return path.replace("\0", "@", 1) if isinstance(path, str) else repr(path)
        host, port = self.address[0], self.address[1]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


def is_systemd_endpoint(description: str) -> bool:
    """Whether `description` is a ``systemd:`` server endpoint string."""
    return description.split(":", 1)[0].lower() == "systemd"


def _argument(description: str, key: str) -> str | None:
    for part in re.split(r"(?<!\\):", description)[1:]:
        if part.startswith(key + "="):
            return part[len(key) + 1 :]
    return None


def _what_was_passed(environ: Mapping[str, str]) -> str:
    names = environ.get("LISTEN_FDNAMES", "")
    if names:
        return f"the sockets passed are named {', '.join(names.split(':'))}"
    return (
        "numd was given no sockets (systemd passes them in LISTEN_FDS, LISTEN_PID and "
        "LISTEN_FDNAMES; Twisted takes them only with LISTEN_FDNAMES, as systemd 227+ sets it)"
    )


def inherited_socket(
    description: str, reactor: Any = None, environ: Mapping[str, str] | None = None
) -> InheritedSocket:
    """The inherited listening socket a ``systemd:`` endpoint string names, and its address.

    Twisted's parser looks the descriptor up (it read ``LISTEN_*`` when it was
    imported); this checks it is there, is a listening stream socket of the
    endpoint's ``domain``, and reads the address it is bound to. Anything else
    is an `InheritedSocketError` that says what is wrong.
    """
    environ = os.environ if environ is None else environ
    index = _argument(description, "index")
    if index is not None and not index.isdigit():
        raise InheritedSocketError(f"index={index} is not a descriptor number (0, 1, ...)")
    try:
        endpoint = serverFromString(reactor, description)
    except KeyError:
        raise InheritedSocketError(
            f"no inherited socket is named {_argument(description, 'name')!r}: "
            + _what_was_passed(environ)
        ) from None
    except IndexError:
        raise InheritedSocketError(
            f"there is no inherited socket number {index}: " + _what_was_passed(environ)
        ) from None
    except AttributeError:
        raise InheritedSocketError(
            f"domain={_argument(description, 'domain')} is not an address family "
            "(INET, INET6 or UNIX)"
        ) from None
    except TypeError as e:
        raise InheritedSocketError(f"needs domain= and one of index= or name= ({e})") from None
    except ValueError as e:
        raise InheritedSocketError(str(e)) from None
    fileno: int = endpoint.fileno
    family = socket.AddressFamily(endpoint.addressFamily)
    try:
        duplicate = os.dup(fileno)
    except OSError as e:
        raise InheritedSocketError(
            f"inherited descriptor {fileno} is not open ({e.strerror})"
        ) from None
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError as e:
        os.close(duplicate)
        raise InheritedSocketError(
            f"inherited descriptor {fileno} is not a socket ({e.strerror})"
        ) from None
    with sock:
        kind = f"inherited descriptor {fileno}"
        if sock.family != family:
            raise InheritedSocketError(
                f"{kind} is an {sock.family.name[3:]} socket, not {family.name[3:]}"
            )
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise InheritedSocketError(f"{kind} is not a listening stream socket")
        return InheritedSocket(fileno, family, sock.getsockname())


def inherited_is_local(description: str) -> bool:
    """Whether a ``systemd:`` endpoint's inherited socket is bound to loopback or is an
    AF_UNIX socket (False when there is no such socket)."""
    try:
        return inherited_socket(description).is_local
    except InheritedSocketError:
        return False
