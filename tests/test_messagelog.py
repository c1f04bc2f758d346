"""The message log: format, batching, rotation, and surviving an unwritable file."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from zope.interface.verify import verifyClass, verifyObject

from numd.messagelog import (
    WRITE_PIECE,
    ConnectionLog,
    IConnectionLog,
    MessageLog,
    SilentConnectionLog,
)

from .manual_writer import ManualWriter


def read(path: str) -> list[dict]:
    """The records of one log file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_records_are_batched_then_flushed(tmp_path: Path) -> None:
    """Records reach the file after the flush interval, all at once, in order."""
    clock = Clock()
    log = MessageLog(str(tmp_path / "m.log"), clock, flush_interval=0.2)
    log.startService()
    connection = log.connection("1.2.3.4:5")
    connection.event("connect")
    connection.received(b"7")
    connection.identify(7)
    connection.sent(b"0")
    assert read(log.path) == []
    clock.advance(0.2)
    records = read(log.path)
    assert [r["dir"] for r in records] == ["event", "in", "out"]
    assert records[2] == {"t": 0.0, "dir": "out", "peer": "1.2.3.4:5", "id": 7, "msg": "0"}
    assert not clock.getDelayedCalls()
    log.stopService()


def test_large_buffer_flushes_at_once(tmp_path: Path) -> None:
    """A buffer of flush_records records is written without waiting for the timer."""
    log = MessageLog(str(tmp_path / "m.log"), Clock(), flush_records=5)
    log.startService()
    for _ in range(20):
        log.connection("p").received(b"x" * 100)
    assert len(read(log.path)) >= 5
    log.stopService()


def test_stop_flushes_everything(tmp_path: Path) -> None:
    """Stopping the service writes what is buffered."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    log.startService()
    log.connection("p").received(b"abc")
    log.stopService()
    assert read(log.path)[0]["msg"] == "abc"
    assert log.written == 1


def test_every_byte_value_round_trips(tmp_path: Path) -> None:
    """All 256 byte values come back exactly through msg.encode('latin-1')."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    log.startService()
    tokens = [bytes([b]) for b in range(256)] + [b'{}%s%(x)s{0}"\\', b"\xff\xfe"]
    connection = log.connection("p")
    for token in tokens:
        connection.new_read(0.0)
        connection.received(token)
    log.stopService()
    assert [r["msg"].encode("latin-1") for r in read(log.path)] == tokens


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    """The log rotates at its size cap and keeps at most max_files old files."""
    clock = Clock()
    log = MessageLog(str(tmp_path / "m.log"), clock, max_bytes=2000, max_files=3, flush_records=10)
    log.startService()
    connection = log.connection("127.0.0.1:1")
    for i in range(400):
        connection.new_read(float(i))
        connection.received(b"%d" % i)
    log.stopService()
    names = sorted(os.listdir(tmp_path))
    assert names == ["m.log", "m.log.1", "m.log.2", "m.log.3"]
    for name in names:
        assert os.path.getsize(tmp_path / name) < 2000 + 1000  # the cap plus at most one batch
        read(str(tmp_path / name))  # every line parses


def test_unwritable_log_drops_and_recovers(tmp_path: Path) -> None:
    """When writes fail, records are counted as dropped and serving goes on; it recovers."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    log.startService()
    assert log._file is not None
    real_write = log._file.write

    def failing_write(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    log._file.write = failing_write  # type: ignore[method-assign]
    log.connection("p").received(b"lost")
    log.flush()
    assert (log.dropped, log.writable) == (1, False)
    log._file.write = real_write  # type: ignore[method-assign]
    log.connection("p").received(b"kept")
    log.flush()
    assert (log.dropped, log.writable, log.written) == (1, True, 1)
    log.stopService()
    assert [r["msg"] for r in read(log.path)] == ["kept"]


def test_missing_directory_at_start_drops(tmp_path: Path) -> None:
    """A log that cannot be opened does not crash: records are dropped and counted."""
    log = MessageLog(str(tmp_path / "gone" / "m.log"), Clock())
    log.startService()
    log.connection("p").received(b"x")
    log.flush()
    assert (log.writable, log.dropped) == (False, 1)
    log.stopService()


def test_dev_null_is_never_rotated(tmp_path: Path) -> None:
    """A message log that is not a regular file (e.g. /dev/null) is written but never renamed."""
    fifo_like = tmp_path / "null"
    os.symlink(os.devnull, fifo_like)
    log = MessageLog(str(fifo_like), Clock(), max_bytes=100, flush_records=2)
    log.startService()
    connection = log.connection("p")
    for i in range(100):
        connection.new_read(float(i))
        connection.received(b"%d" % i)
    log.stopService()
    assert sorted(os.listdir(tmp_path)) == ["null"]
    assert os.path.islink(fifo_like)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_log_off_writes_and_formats_nothing(tmp_path: Path) -> None:
    """With the log off (--no-message-log) no file is created and connections record nothing."""
    log = MessageLog(str(tmp_path / "m.log"), Clock(), enabled=False)
    log.startService()
    connection = log.connection("127.0.0.1:1")
    connection.new_read(0.0)
    connection.received(b"odd")
    connection.records([b"odd", b"5"], [b"7"])
    connection.sent(b"7")
    connection.event("connect")
    log.stopService()
    assert os.listdir(tmp_path) == []
    assert (log.written, log.dropped, log.writable) == (0, 0, True)


def test_a_reads_records_are_its_tokens_then_its_replies(tmp_path: Path) -> None:
    """`records` writes one record per token, in order, stamped with the read's time."""
    clock = Clock()
    log = MessageLog(str(tmp_path / "m.log"), clock)
    log.startService()
    connection = log.connection("127.0.0.1:9")
    connection.identify(3)
    connection.new_read(1732245600.0125)
    clock.advance(5)  # records of the read keep the read's time
    connection.records([b"even", b"-12", b"odd"], [b"4"])
    connection.records([], [])
    connection.records([], [b"7"])
    log.stopService()
    records = read(log.path)
    assert [(r["dir"], r["msg"], r["t"], r["id"]) for r in records] == [
        ("in", "even", 1732245600.012, 3),
        ("in", "-12", 1732245600.012, 3),
        ("in", "odd", 1732245600.012, 3),
        ("out", "4", 1732245600.012, 3),
        ("out", "7", 1732245600.012, 3),
    ]
    assert log.written == 5


def test_stamps_round_to_the_millisecond(tmp_path: Path) -> None:
    """Times are written to the millisecond, rounded, and reformatted when the millisecond changes."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    assert log.stamp(1.001) == b'{"t":1.001,"dir":"'  # 1.001 * 1000 is 1000.999...
    assert log.stamp(1.0014) == b'{"t":1.001,"dir":"'
    assert log.stamp(12.3456) == b'{"t":12.346,"dir":"'
    assert log.stamp(0) == b'{"t":0.000,"dir":"'


# -- the writer thread


def test_writes_wait_for_the_writer_and_keep_their_order(tmp_path: Path) -> None:
    """Flushes hand records over; they reach the file when the writer runs, in order; stop waits."""
    writer = ManualWriter()
    log = MessageLog(str(tmp_path / "m.log"), Clock(), run=writer)
    log.startService()
    connection = log.connection("p")
    for batch in range(3):
        connection.new_read(float(batch))
        connection.records([b"%d" % (batch * 10 + i) for i in range(5)], [])
        log.flush()
    assert read(log.path) == [] and log.written == 0
    stopped = log.stopService()
    assert not stopped.called  # three writes and the close are still queued
    writer.finish_all()
    assert stopped.called
    assert [r["msg"] for r in read(log.path)] == [
        str(b * 10 + i) for b in range(3) for i in range(5)
    ]
    assert (log.written, log.dropped, log.writable) == (15, 0, True)


def test_a_disk_that_falls_behind_drops_records_and_recovers(tmp_path: Path) -> None:
    """Past max_behind bytes in the writer's hands, records are dropped (counted), not queued."""
    writer = ManualWriter()
    log = MessageLog(str(tmp_path / "m.log"), Clock(), max_behind=300, run=writer)
    log.startService()
    connection = log.connection("p")
    connection.records([b"1", b"2"], [])  # about 120 bytes
    log.flush()
    connection.records([b"3", b"4"], [])
    log.flush()
    connection.records([b"5", b"6"], [])
    log.flush()  # over 300 bytes behind: dropped
    assert (log.dropped, log.writable) == (2, False)
    writer.finish_all()
    assert (log.written, log.writable) == (4, True)
    connection.records([b"7"], [])
    log.flush()
    writer.finish_all()
    log.stopService()
    writer.finish_all()
    assert [r["msg"] for r in read(log.path)] == ["1", "2", "3", "4", "7"]


@pytest_twisted.ensureDeferred
async def test_the_writer_thread_writes_off_the_reactor_thread(tmp_path: Path) -> None:
    """With the real reactor, the file is written on the log's own thread; stop writes the rest."""
    from twisted.internet import reactor

    log = MessageLog(str(tmp_path / "m.log"), reactor, flush_records=10)
    log.startService()
    threads: list[str] = []
    assert log._file is not None
    original = log._file.write
    log._file.write = lambda data: (
        threads.append(threading.current_thread().name),
        original(data),
    )[1]  # type: ignore[method-assign]
    connection = log.connection("127.0.0.1:1")
    for i in range(1000):
        connection.new_read(float(i))
        connection.received(b"%d" % i)
    await log.stopService().addTimeout(5, reactor)
    assert threads and threading.main_thread().name not in threads
    assert [r["msg"] for r in read(log.path)] == [str(i) for i in range(1000)]
    assert log.written == 1000


def test_a_large_batch_is_written_in_pieces_in_order(tmp_path: Path) -> None:
    """Megabytes of records (arrays' replies are logged whole) go out in bounded pieces, all intact."""
    log = MessageLog(str(tmp_path / "m.log"), Clock(), flush_records=10_000)
    log.startService()
    assert log._file is not None
    sizes: list[int] = []
    original = log._file.write
    log._file.write = lambda data: (sizes.append(len(data)), original(data))[1]  # type: ignore[method-assign]
    connection = log.connection("p")
    replies = [b"[%d,...]/9" % i + b"7" * 60_000 for i in range(40)]
    for reply in replies:
        connection.new_read(0.0)
        connection.records([b"[1]"], [reply])
    log.stopService()
    assert len(sizes) > 1 and max(sizes) < WRITE_PIECE + 70_000
    records = read(log.path)
    assert [r["msg"].encode() for r in records if r["dir"] == "out"] == replies
    assert log.written == 80


# -- outside rotation and full disks


def open_paths() -> set[str]:
    """The files this process has open (Linux's /proc)."""
    paths = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            paths.add(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor)
    return paths


def test_copytruncate_leaves_no_hole(tmp_path: Path) -> None:
    """Truncated to 0 from outside (logrotate's copytruncate), the file is written from its
    start: no NUL bytes, and its first line is a whole record."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    log.startService()
    connection = log.connection("127.0.0.1:1")
    connection.records([b"%d" % i for i in range(100)], [])
    log.flush()
    os.truncate(log.path, 0)
    connection.records([b"after"], [])
    log.stopService()
    data = Path(log.path).read_bytes()
    assert b"\0" not in data
    assert [r["msg"] for r in read(log.path)] == ["after"]


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_a_moved_or_deleted_log_is_replaced_by_a_new_file(tmp_path: Path, how: str) -> None:
    """Once the path has named no file for a second, the next batch opens a new file there;
    until then records go to the old file; the old file is closed."""
    clock = Clock()
    log = MessageLog(str(tmp_path / "m.log"), clock)
    log.startService()
    connection = log.connection("p")
    connection.records([b"1"], [])
    log.flush()
    moved = str(tmp_path / "m.log.moved")
    if how == "moved":
        os.rename(log.path, moved)
    else:
        os.link(log.path, moved)  # keep a name to read it by
        os.remove(log.path)
    connection.records([b"2"], [])
    log.flush()
    assert not os.path.exists(log.path)
    clock.advance(1)
    connection.records([b"3"], [])
    log.flush()
    assert [r["msg"] for r in read(moved)] == ["1", "2"]
    assert [r["msg"] for r in read(log.path)] == ["3"]
    if how == "moved":
        assert moved not in open_paths()
    log.stopService()
    assert (log.written, log.dropped) == (3, 0)


def test_a_file_created_in_place_of_the_log_is_taken_at_the_next_batch(tmp_path: Path) -> None:
    """logrotate's create mode: moved aside and a new file made; numd writes to the new one
    at its next batch even without a SIGHUP, and closes the moved one."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    log.startService()
    connection = log.connection("p")
    connection.records([b"1"], [])
    log.flush()
    moved = str(tmp_path / "m.log-20250101")
    os.rename(log.path, moved)
    Path(log.path).touch()
    connection.records([b"2"], [])
    log.flush()
    assert moved not in open_paths()
    log.stopService()
    assert [r["msg"] for r in read(moved)] == ["1"]
    assert [r["msg"] for r in read(log.path)] == ["2"]


def test_reopen_writes_earlier_records_to_the_old_file_and_later_ones_to_a_new_one(
    tmp_path: Path,
) -> None:
    """SIGHUP's reopen runs on the writer after the writes handed over before it: records
    buffered before it end in the moved file, later ones in a new file at the path."""
    writer = ManualWriter()
    log = MessageLog(str(tmp_path / "m.log"), Clock(), run=writer)
    log.startService()
    connection = log.connection("p")
    connection.records([b"1"], [])
    log.flush()  # handed over, not written yet
    connection.records([b"2"], [])  # buffered
    moved = str(tmp_path / "m.log.1")
    os.rename(log.path, moved)
    reopened = log.reopen()
    connection.records([b"3"], [])
    log.flush()
    assert not reopened.called
    writer.finish_all()
    assert reopened.called
    assert moved not in open_paths()
    log.stopService()
    writer.finish_all()
    assert [r["msg"] for r in read(moved)] == ["1", "2"]
    assert [r["msg"] for r in read(log.path)] == ["3"]
    assert (log.written, log.dropped, log.writable) == (3, 0, True)


def test_reopen_of_a_log_that_is_off_or_stopped_does_nothing(tmp_path: Path) -> None:
    """With --no-message-log, or once stopped, a SIGHUP opens no file."""
    off = MessageLog(str(tmp_path / "off.log"), Clock(), enabled=False)
    off.startService()
    assert off.reopen().called
    off.stopService()
    stopped = MessageLog(str(tmp_path / "stopped.log"), Clock())
    stopped.startService()
    stopped.stopService()
    os.remove(stopped.path)
    assert stopped.reopen().called
    assert os.listdir(tmp_path) == []


def test_a_path_that_cannot_be_opened_again_drops_records_until_it_can(tmp_path: Path) -> None:
    """Its directory gone: SIGHUP's reopen fails (logged) and the old file stays in use; past
    the grace the records are dropped and counted, `writable` is false; the log recovers
    once the directory is back."""
    clock = Clock()
    directory = tmp_path / "logs"
    directory.mkdir()
    log = MessageLog(str(directory / "m.log"), clock)
    log.startService()
    os.rename(directory, tmp_path / "gone")
    log.reopen()
    connection = log.connection("p")
    connection.records([b"kept"], [])
    log.flush()
    assert (log.written, log.writable) == (1, True)
    clock.advance(1)
    connection.records([b"lost"], [])
    log.flush()
    assert (log.dropped, log.writable) == (1, False)
    directory.mkdir()
    connection.records([b"back"], [])
    log.flush()
    log.stopService()
    assert [r["msg"] for r in read(str(tmp_path / "gone" / "m.log"))] == ["kept"]
    assert [r["msg"] for r in read(log.path)] == ["back"]
    assert (log.written, log.dropped, log.writable) == (2, 1, True)


def _half_then_full(fd: int, data: bytes | memoryview) -> int:
    """A disk that fills up in the middle of a write: half of it lands, then ENOSPC."""
    os.write(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def _short_then_full(fd: int, data: bytes | memoryview) -> int:
    """The kernel's way: a short write (part of the bytes), then ENOSPC on the rest."""
    if len(data) < 50:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    return os.write(fd, data[: len(data) - 40])


@pytest.mark.parametrize(
    "fault", [_half_then_full, _short_then_full], ids=["half-then-ENOSPC", "short-then-EDQUOT"]
)
def test_a_write_that_fails_half_way_leaves_only_whole_records(
    tmp_path: Path, fault: Callable[[int, bytes | memoryview], int]
) -> None:
    """A full disk in the middle of a batch: the batch's records are dropped (counted), the
    partial record is cut off, and the next records start a line of their own."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    log.startService()
    connection = log.connection("127.0.0.1:1")
    connection.records([b"1", b"2"], [])
    log.flush()
    assert log._file is not None
    log._file._os_write = fault
    connection.records([b"3", b"4", b"5"], [b"6"])
    log.flush()
    assert (log.written, log.dropped, log.writable) == (2, 4, False)
    log._file._os_write = os.write
    connection.records([b"7"], [])
    log.flush()
    log.stopService()
    assert [r["msg"] for r in read(log.path)] == ["1", "2", "7"]  # every line parses
    assert (log.written, log.dropped, log.writable) == (3, 4, True)


def test_a_batch_that_fails_after_its_first_pieces_counts_only_the_rest_as_dropped(
    tmp_path: Path,
) -> None:
    """A large batch is written in pieces: those written before the disk filled are kept
    and counted as written, the failed piece and the rest as dropped."""
    log = MessageLog(str(tmp_path / "m.log"), Clock(), flush_records=10_000)
    log.startService()
    assert log._file is not None
    pieces = 0

    def second_piece_fails(fd: int, data: bytes | memoryview) -> int:
        nonlocal pieces
        pieces += 1
        return _half_then_full(fd, data) if pieces == 2 else os.write(fd, data)

    log._file._os_write = second_piece_fails
    connection = log.connection("p")
    for i in range(3):
        connection.new_read(0.0)
        connection.records([b"%d" % i + b"7" * 200_000], [])
    log.flush()
    assert (log.written, log.dropped) == (2, 1)
    log.stopService()
    assert [r["msg"][:1] for r in read(log.path)] == ["0", "1"]


@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
def test_a_connection_log_provides_the_interface_either_way(tmp_path: Path, enabled: bool) -> None:
    """With the log on or off, a connection gets an `IConnectionLog`: both kinds implement
    every method and attribute the counter protocol uses."""
    log = MessageLog(str(tmp_path / "m.log"), Clock(), enabled=enabled)
    connection = log.connection("127.0.0.1:40000")
    assert verifyObject(IConnectionLog, connection)
    for implementation in (ConnectionLog, SilentConnectionLog):
        assert verifyClass(IConnectionLog, implementation)
