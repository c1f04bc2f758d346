"""The message log's file: appended to, rotated by size, reopened when it is moved, never torn.

Why not `twisted.python.logfile.LogFile`, which numd used before: it writes at
its own idea of the file's end (``rb+``, then a seek), so after ``logrotate``'s
``copytruncate`` the next write lands at the old offset and leaves a hole of NUL
bytes; it ignores how many bytes a write took, so a short write on a full disk
leaves half a record that the next write is glued onto; and it keeps writing to
a file that was moved away, past its size cap, until someone calls ``reopen``.

`AppendLogFile` is the same idea (size rotation, ``name.1`` the newest of at
most ``max_files`` old files) with these differences:

- the file is opened with ``O_APPEND``: every write goes to the file's end as it
  is at that moment, so a file truncated from outside is simply written from 0;
- `write` appends all of its bytes or none of them: after a failed or short
  write the file is cut back (``ftruncate``) to its size before the write, so a
  caller that writes whole lines keeps a file of whole lines;
- `reopen_if_moved` compares the path's device and inode with the open file's
  and opens the path anew if they differ (moved, deleted, replaced);
- `reopen` opens the path anew on request (numd's SIGHUP);
- a path that is not a regular file (``/dev/null``, a FIFO) is never rotated:
  as root, renaming it would replace the system's ``/dev/null`` with a plain file.

It is not thread-safe: the message log uses it from its writer thread only.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

MISSING_GRACE = 1.0
"""Seconds the path may name no file before `AppendLogFile.reopen_if_moved` creates one."""

OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
"""Read-write (a failed write's tail is read back to find where to cut) and append-only writes."""


class AppendLogFile:
    """A log file written with ``O_APPEND`` and rotated by size; see the module's docstring.

    Opening happens in the constructor, so a bad path fails there with `OSError`.
    """

    def __init__(
        self,
        path: str,
        max_bytes: int | None,
        max_files: int,
        write: Callable[[int, bytes | memoryview], int] = os.write,
    ) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        """Rotate before a write once the file holds this many bytes (None: never)."""
        self.max_files = max_files
        """Old files kept: ``path.1`` (the newest) to ``path.<max_files>``."""
        self._os_write = write
        """`os.write`, or a test's stand-in for a disk that fills up."""
        self._mode: int | None = None
        """The mode of the file found at start, given to the files rotation and reopening create."""
        try:
            self._mode = stat.S_IMODE(os.stat(self.path).st_mode)
        except FileNotFoundError:
            pass
        self._fd = -1
        self._missing_since: float | None = None
        """When `reopen_if_moved` first found nothing at `path` (None: it found our file)."""
        self.rotatable = False
        """Whether the open file is a regular file (only those rotate)."""
        self.size = 0
        """The file's size after our last write (checked with fstat before each write)."""
        self.rotate_error: OSError | None = None
        """Why the last rotation could not be done (None once one succeeds)."""
        self._open()

    # -- opening and closing ----------------------------------------------------

    def _open(self) -> None:
        """Open (or create) the file at `path` and make it the one written."""
        created = not os.path.lexists(self.path)
        fd = os.open(self.path, OPEN_FLAGS, 0o666 if self._mode is None else self._mode)
        try:
            info = os.fstat(fd)
            if created and self._mode is not None and stat.S_ISREG(info.st_mode):
                os.fchmod(fd, self._mode)  # as LogFile does: the umask does not narrow it
        except OSError:
            os.close(fd)
            raise
        old, self._fd = self._fd, fd
        self._missing_since = None
        self.rotatable = stat.S_ISREG(info.st_mode)
        self.size = info.st_size
        if old >= 0:
            os.close(old)
        if self.rotatable and self.size and os.pread(fd, 1, self.size - 1) != b"\n":
            # A line left unfinished by someone else (a crash mid-write): end it, so
            # that our first record starts a line of its own.
            try:
                self.size += self._os_write(fd, b"\n")
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._fd < 0

    def fileno(self) -> int:
        """The open file's descriptor."""
        return self._fd

    def close(self) -> None:
        """Close the file; it cannot be written afterwards."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def reopen(self) -> None:
        """Open `path` anew (after it was moved by ``logrotate``, say) and close the old file."""
        self._open()

    def reopen_if_moved(self, now: float) -> bool:
        """Open `path` anew if it names another file (replaced, or moved and recreated),
        or if it has named none for `MISSING_GRACE` seconds (moved or deleted).

        `now` is the caller's clock. The grace lets ``logrotate`` create the new
        file itself right after moving the old one: numd creating it first would
        make logrotate move ours aside as ``*.backup`` and report an error.
        Records meanwhile go to the moved file, as before the move. Two system
        calls (``stat`` of the path, ``fstat`` of the file): cheap enough for once
        per batch of records. Returns whether the file was reopened.
        """
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            if self._missing_since is None:
                self._missing_since = now
            if now - self._missing_since < MISSING_GRACE:
                return False
        except OSError:
            return False  # cannot tell (a directory we may not search): keep what we have
        else:
            self._missing_since = None
            mine = os.fstat(self._fd)
            if (at_path.st_dev, at_path.st_ino) == (mine.st_dev, mine.st_ino):
                return False
        self._open()
        return True

    # -- writing ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append all of `data`, or none of it and raise `OSError`.

        Rotates first if the file has reached `max_bytes`. On a failed or short
        write (a full disk: ``ENOSPC``, ``EDQUOT``), what was written of `data` is
        cut off again, so the file ends where it ended before, on a whole line.
        """
        if self._fd < 0:
            raise ValueError(f"{self.path} is closed")
        if self.rotatable:
            self.size = os.fstat(self._fd).st_size  # truncated from outside? (copytruncate)
            if self.max_bytes is not None and self.size >= self.max_bytes:
                self.rotate()
        before = self.size
        view = memoryview(data)
        try:
            while view:
                written = self._os_write(self._fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, f"a write to {self.path} took no bytes")
                view = view[written:]
        except OSError:
            self._cut_back(before, len(data))
            raise
        self.size = before + len(data)

    def _cut_back(self, before: int, length: int) -> None:
        """After a failed write of `length` bytes at `before`: make the file end on a whole line again.

        Normally that is cutting it back to `before`. If the file was also
        truncated from outside meanwhile (``copytruncate`` at the same moment), the
        write's bytes are no longer at `before`: then the file is cut after the
        last newline of its last `length` bytes, or to what precedes them.
        """
        if not self.rotatable:
            return  # /dev/null, a FIFO: nothing to cut, nothing kept
        try:
            end = os.fstat(self._fd).st_size
            if end > before:
                os.ftruncate(self._fd, before)
                end = before
            if end and os.pread(self._fd, 1, end - 1) != b"\n":
                start = max(end - length, 0)
                tail = os.pread(self._fd, end - start, start)
                os.ftruncate(self._fd, start + tail.rfind(b"\n") + 1)
            self.size = os.fstat(self._fd).st_size
        except OSError:
            pass  # the write's own error is the one to report

    # -- rotation -------------------------------------------------------------------

    def old_files(self) -> list[int]:
        """The numbers of the old files there are (``path.1``, ``path.2``, ...), in order."""
        directory, name = os.path.split(self.path)
        numbers = []
        for entry in os.listdir(directory):
            prefix, dot, number = entry.rpartition(".")
            if prefix == name and dot and number.isdigit() and number.isascii() and int(number):
                numbers.append(int(number))
        return sorted(numbers)

    def rotate(self) -> None:
        """Shift the old files (``.1`` becomes ``.2`` ...), drop the oldest, start a new file.

        The current file is renamed to ``.1`` while still open and the new one is
        opened before it is closed, so there is always a file to write to. Like
        LogFile, a rotation that cannot be done (a directory we may not write)
        leaves the file as it is, to be tried again at the next write; the reason
        is kept in `rotate_error` for the caller to report.
        """
        directory = os.path.dirname(self.path)
        if not os.access(directory, os.W_OK):
            self.rotate_error = PermissionError(
                errno.EACCES, "cannot rotate: the directory is not writable", directory
            )
            return
        try:
            for number in reversed(self.old_files()):
                old = f"{self.path}.{number}"
                if number >= self.max_files:
                    os.remove(old)
                else:
                    os.rename(old, f"{self.path}.{number + 1}")
            os.rename(self.path, f"{self.path}.1")
            self._open()
        except OSError as e:
            self.rotate_error = e
        else:
            self.rotate_error = None
