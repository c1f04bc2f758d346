"""The message log: format, batching, rotation, and surviving an unwritable file."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest_twisted
from twisted.internet.task import Clock

from numd.messagelog import WRITE_PIECE, MessageLog

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
