"""numd.logfile: the message log's file appends, cuts back failed writes, and follows its path."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from numd.logfile import MISSING_GRACE, AppendLogFile


def open_paths() -> set[str]:
    """The files this process has open (Linux's /proc)."""
    fds = Path("/proc/self/fd")
    paths = set()
    for fd in fds.iterdir():
        try:
            paths.add(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor)
    return paths


def test_a_short_write_is_completed(tmp_path: Path) -> None:
    """A write the kernel takes only part of is carried on until every byte is written."""
    path = tmp_path / "m.log"
    sizes: list[int] = []

    def short(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return os.write(fd, data[:3])

    log = AppendLogFile(str(path), None, 5, write=short)
    log.write(b"0123456789\n")
    log.close()
    assert path.read_bytes() == b"0123456789\n"
    assert sizes == [11, 8, 5, 2]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_a_short_write_then_a_full_disk_cuts_the_file_back(tmp_path: Path, code: int) -> None:
    """The kernel takes part of a write, then the disk is full: the part is cut off again,
    the error is raised, and the file still ends where it ended before."""
    path = tmp_path / "m.log"

    def fills_up(fd: int, data: bytes | memoryview) -> int:
        if len(data) < 20:
            raise OSError(code, os.strerror(code))
        return os.write(fd, data[:7])

    log = AppendLogFile(str(path), None, 5)
    log.write(b'{"n":1}\n')
    log._os_write = fills_up
    with pytest.raises(OSError) as raised:
        log.write(b'{"n":2}\n{"n":3}\n{"n":4}\n')
    assert raised.value.errno == code
    assert path.read_bytes() == b'{"n":1}\n'
    assert log.size == 8
    log._os_write = os.write
    log.write(b'{"n":5}\n')
    log.close()
    assert path.read_bytes() == b'{"n":1}\n{"n":5}\n'


@pytest.mark.timeout(5)
def test_a_write_that_takes_nothing_is_an_error_not_a_loop(tmp_path: Path) -> None:
    """A write that keeps taking 0 bytes raises (EIO) instead of spinning, and leaves nothing."""
    path = tmp_path / "m.log"
    log = AppendLogFile(str(path), None, 5, write=lambda fd, data: 0)
    with pytest.raises(OSError) as raised:
        log.write(b"lost\n")
    assert raised.value.errno == errno.EIO
    log.close()
    assert path.read_bytes() == b""


def test_a_failed_write_during_an_outside_truncation_leaves_whole_lines(tmp_path: Path) -> None:
    """The file is truncated from outside (copytruncate) just as a write fails half way:
    the half record, now at the file's start, is cut off too."""
    path = tmp_path / "m.log"
    log = AppendLogFile(str(path), None, 5)
    log.write(b"a" * 40 + b"\n")

    def truncated_then_full(fd: int, data: bytes | memoryview) -> int:
        os.truncate(path, 0)
        os.write(fd, data[:12])
        raise OSError(errno.ENOSPC, "No space left on device")

    log._os_write = truncated_then_full
    with pytest.raises(OSError):
        log.write(b"b" * 9 + b"\n" + b"c" * 9 + b"\n")
    log.close()
    assert path.read_bytes() == b"b" * 9 + b"\n"  # a whole line; the partial one is gone


def test_an_unfinished_last_line_is_ended_at_open(tmp_path: Path) -> None:
    """A file that ends in the middle of a line (an earlier crash) gets a newline first,
    so the first new record is a line of its own."""
    path = tmp_path / "m.log"
    path.write_bytes(b'{"n":1}\n{"n":')
    log = AppendLogFile(str(path), None, 5)
    log.write(b'{"n":3}\n')
    log.close()
    assert path.read_bytes().splitlines() == [b'{"n":1}', b'{"n":', b'{"n":3}']


def test_rotation_keeps_the_files_mode_and_shifts_old_files(tmp_path: Path) -> None:
    """Rotated at its cap, `.1` is the newest old file, the oldest beyond max_files is
    removed, and each new file gets the mode of the file found at start."""
    path = tmp_path / "m.log"
    path.write_bytes(b"")
    os.chmod(path, 0o600)
    log = AppendLogFile(str(path), 10, 2)
    for n in range(4):
        log.write(b"%d" % n * 9 + b"\n")  # 10 bytes: a rotation before each next write
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["m.log", "m.log.1", "m.log.2"]
    assert [(tmp_path / name).read_bytes()[:1] for name in ("m.log", "m.log.1", "m.log.2")] == [
        b"3",
        b"2",
        b"1",
    ]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert log.rotate_error is None


def test_a_rotation_that_fails_keeps_writing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename that fails leaves the file in place, written past its cap, with the reason kept."""
    path = tmp_path / "m.log"
    log = AppendLogFile(str(path), 10, 2)

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", src)

    monkeypatch.setattr(os, "rename", refuse)
    log.write(b"x" * 10 + b"\n")
    log.write(b"y" * 10 + b"\n")
    assert isinstance(log.rotate_error, PermissionError)
    monkeypatch.undo()
    log.write(b"z\n")
    log.close()
    assert log.rotate_error is None
    assert (tmp_path / "m.log.1").read_bytes() == b"x" * 10 + b"\n" + b"y" * 10 + b"\n"


def test_a_missing_path_is_recreated_after_a_grace(tmp_path: Path) -> None:
    """Deleted or moved away, the path is created anew once it has named no file for the
    grace (so logrotate's own `create` wins); the old file is then closed."""
    path = tmp_path / "m.log"
    log = AppendLogFile(str(path), None, 5)
    os.rename(path, tmp_path / "moved")
    assert not log.reopen_if_moved(100.0)
    assert not log.reopen_if_moved(100.0 + MISSING_GRACE / 2)
    assert not path.exists()
    assert log.reopen_if_moved(100.0 + MISSING_GRACE)
    assert path.exists()
    assert str(tmp_path / "moved") not in open_paths()
    assert not log.reopen_if_moved(200.0)  # our file again
    log.close()


def test_a_replaced_path_is_followed_at_once(tmp_path: Path) -> None:
    """A new file at the path (logrotate's create after its move) is taken at the next check."""
    path = tmp_path / "m.log"
    log = AppendLogFile(str(path), None, 5)
    log.write(b"old\n")
    os.rename(path, tmp_path / "moved")
    path.write_bytes(b"")
    assert log.reopen_if_moved(0.0)
    log.write(b"new\n")
    log.close()
    assert (tmp_path / "moved").read_bytes() == b"old\n"
    assert path.read_bytes() == b"new\n"
