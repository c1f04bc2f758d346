"""Reading the shared state from Redis as one consistent snapshot, in chunks.

A `Follower` (`numd.store.redis.follower`) loads a snapshot before it follows the
change stream, and again after a gap. Reading 10^6 members in one script call
would hold Redis for about a second, so the list and the registry are read in
chunks, each one read-only script call that also returns the stream's position;
the entries that landed between the chunks are then read and applied, so the
snapshot is exact as of its last call. A clear, or a trim of entries it needs,
spoils it (`SnapshotSpoilt`): it is read again.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from numd.service import ClientRecord
from numd.store.redis.connection import RedisClient
from numd.store.redis.encoding import MEMBER_BYTES, MIN_BOUND, OFFSET, split_members
from numd.store.redis.lua import Script
from numd.store.redis.scripts import Keys, StreamEntry, parse_entries

DEFAULT_CHUNK = 10_000
"""Members one snapshot call reads (about 10 ms of Redis's time, at about 1 us a member)."""
DEFAULT_CLIENT_CHUNK = 1000
"""Clients one snapshot call reads (a few ms of Redis's time)."""
SNAPSHOT_ATTEMPTS = 3
"""Chunked snapshots tried (each spoilt by a clear or a trim) before one atomic read."""
RANGE_PAGE = 1000
"""Entries one ``XRANGE`` reads while a snapshot catches up with the stream."""
WHOLE_SNAPSHOT_TIMEOUT = 30.0
"""Seconds the last-resort snapshot, the whole list in one call, may take (about 1 s
for 10^6 values, during which Redis serves nobody else)."""

SNAPSHOT = Script(
    "snapshot",
    b"""#!lua flags=no-writes
-- The change stream's last entry ID and count of entries ever added, with one chunk of
-- the sorted list (members after a BYLEX bound, concatenated) and one of the registry
-- (clients after a score bound, one line each: 'id number last_given last_seen connected').
-- KEYS: values, changes, clients. ARGV: member bound, most members, client key prefix,
-- client bound, most clients (each most: -1 for all, 0 for none).
local last, added = '0-0', 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1]
    elseif info[i] == 'entries-added' then added = info[i + 1] end
  end
end
local members = ''
if ARGV[2] ~= '0' then
  members = table.concat(
    redis.call('ZRANGE', KEYS[1], ARGV[1], '+', 'BYLEX', 'LIMIT', 0, ARGV[2]))
end
local lines = {}
if ARGV[5] ~= '0' then
  local ids = redis.call('ZRANGE', KEYS[3], ARGV[4], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[5])
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', ARGV[3] .. id, 'number', 'last_given', 'last_seen', 'connected')
    lines[#lines + 1] = id .. ' ' .. (f[1] or '0') .. ' ' .. (f[2] or '-') .. ' '
      .. (f[3] or '0') .. ' ' .. (f[4] or '0')
  end
end
return {last, added, members, table.concat(lines, '\\n')}
""",
)
"""The snapshot script: the stream's position, and a chunk of the list and of the registry."""

STREAM_STATE = Script(
    "stream-state",
    b"""#!lua flags=no-writes
-- How many entries the change stream ever added, and how many it holds. KEYS: changes.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length = 0, 0
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1]
  elseif info[i] == 'length' then length = info[i + 1] end
end
return {added, length}
""",
)
"""The gap check sent right behind each ``XREAD``."""

EntryId = tuple[int, int]
"""A stream entry ID (``ms-seq``) as numbers, which compare as the IDs do."""

_MEMBER = struct.Struct(f">Q{MEMBER_BYTES - 8}x")
CLIENT_OPS = ("register", "report", "give", "disconnect")
UPDATE_OP = "update"
REGISTER_MANY_OP = "register-many"
"""The entry of several clients' registrations (`scripts.StateScripts.register_many`)."""
"""The entry of several clients' changes (`scripts.StateScripts.update`)."""
_ABOVE_ALL = b"\xff" * (MEMBER_BYTES + 1)
"""Sorts above every member: where a snapshot stands once it has read the whole list."""


def parse_id(entry: bytes) -> EntryId:
    """The numbers of a stream entry ID such as ``b"1700000000000-3"``."""
    ms, _, seq = entry.partition(b"-")
    return int(ms), int(seq or b"0")


def values_of(blob: bytes) -> list[int]:
    """The values of a concatenation of members, in its order (`encoding.decode_members`
    of `encoding.split_members`, without a Python call per member)."""
    if len(blob) % MEMBER_BYTES:
        raise ValueError(f"{len(blob)} bytes are not a whole number of {MEMBER_BYTES}-byte members")
    return [value - OFFSET for (value,) in _MEMBER.iter_unpack(blob)]


def parse_clients(blob: bytes) -> list[ClientRecord]:
    """The registry lines of a `SNAPSHOT` reply as records."""
    records = []
    for line in blob.split(b"\n") if blob else ():
        client_id, number, last_given, last_seen, connected = line.split(b" ")
        records.append(
            ClientRecord(
                int(client_id),
                number=int(number),
                last_given=None if last_given == b"-" else int(last_given),
                connected=connected == b"1",
                last_seen=float(last_seen),
            )
        )
    return records


@dataclass
class Snapshot:
    """The shared state as of one change-stream entry."""

    entry: bytes
    """The last entry the snapshot includes (``0-0``: none yet)."""
    added: int
    """How many entries the stream had added by then."""
    values: list[int]
    """The sorted list, in order."""
    clients: dict[int, ClientRecord] = field(default_factory=dict)
    """The registry."""
    calls: int = 0
    """Script calls it took."""


class SnapshotSpoilt(Exception):
    """A chunked snapshot was spoilt by a clear, or a trim of entries it needed, while it was
    read: read it again."""


def parse_updates(blob: bytes) -> list[tuple[int, int | None, int | None, bool]]:
    """The clients of an update entry: (id, number or None, given or None, disconnected)."""
    updates = []
    for line in blob.split(b"\n"):
        client_id, number, given, bye = line.split(b" ")
        updates.append(
            (
                int(client_id),
                None if number == b"-" else int(number),
                None if given == b"-" else int(given),
                bye == b"1",
            )
        )
    return updates


def parse_registrations(blob: bytes) -> list[tuple[int, int]]:
    """The clients of a register-many entry: (id, start number)."""
    pairs = []
    for line in blob.split(b"\n"):
        client_id, number = line.split(b" ")
        pairs.append((int(client_id), int(number)))
    return pairs


def _client_change(entry: StreamEntry, record: ClientRecord) -> None:
    """Set on `record` what a client entry (register, report, give, disconnect) says."""
    fields = entry.fields
    op = entry.op
    if op == "register":
        record.number = int(fields[b"number"])
        record.connected = True
    elif op == "report":
        record.number = int(fields[b"number"])
    elif op == "give":
        record.last_given = int(fields[b"last_given"])
    else:
        record.connected = False
    record.last_seen = float(fields[b"last_seen"])


def record_fields(record: ClientRecord) -> tuple[object, ...]:
    """What of a record a snapshot compares, to tell observers only of clients that changed."""
    return record.number, record.last_given, record.connected, record.last_seen


class SnapshotReader:
    """Reads snapshots through `redis` (the `Follower` is one)."""

    redis: RedisClient
    keys: Keys
    chunk: int
    client_chunk: int
    _client_prefix: bytes

    async def read_snapshot(self, chunk: int | None = None) -> Snapshot:
        """The shared state as of one stream entry, read in chunks (`chunk` -1: in one call).

        Raises `SnapshotSpoilt` if a clear, or a trim of entries it needs, spoilt it.
        """
        chunk = self.chunk if chunk is None else chunk
        client_chunk = self.client_chunk if chunk != -1 else -1
        blobs: list[bytes] = []
        clients: dict[int, ClientRecord] = {}
        # Per call after the first: its stream position, and the last member read before it
        # (members merged between the calls at or below it are not in any chunk).
        marks: list[tuple[EntryId, bytes]] = []
        read_up_to, clients_after = b"", b"-inf"
        more_members = more_clients = True
        calls = 0
        while more_members or more_clients:
            last, added, blob, lines = await self._snapshot_call(
                b"(" + read_up_to if read_up_to else MIN_BOUND,
                chunk if more_members else 0,
                clients_after,
                client_chunk if more_clients else 0,
            )
            if calls == 0:
                start, start_added = last, added
            else:
                marks.append((parse_id(last), read_up_to if more_members else _ABOVE_ALL))
            calls += 1
            if more_members:
                blobs.append(blob)
                more_members = chunk != -1 and len(blob) == chunk * MEMBER_BYTES
                read_up_to = blob[-MEMBER_BYTES:] or read_up_to
            if more_clients:
                records = parse_clients(lines)
                clients.update((record.client_id, record) for record in records)
                more_clients = client_chunk != -1 and len(records) == client_chunk
                if records:
                    clients_after = b"(%d" % records[-1].client_id
        values = values_of(b"".join(blobs))
        missed: list[bytes] = []
        if added != start_added:
            entries = await self._entries(start, last, added - start_added)
            calls += -(-len(entries) // RANGE_PAGE)
            for entry in entries:
                if entry.op == "merge":
                    at = parse_id(entry.entry)
                    cursor = next(cursor for position, cursor in marks if at <= position)
                    members = split_members(entry.fields[b"members"])
                    missed += [member for member in members if member < cursor]
                elif entry.op == "clear":
                    raise SnapshotSpoilt(f"the list was cleared at entry {entry.entry.decode()}")
                elif entry.op in CLIENT_OPS:
                    client_id = int(entry.fields[b"id"])
                    record = clients.setdefault(client_id, ClientRecord(client_id))
                    _client_change(entry, record)
                elif entry.op == REGISTER_MANY_OP:
                    last_seen = float(entry.fields[b"last_seen"])
                    for client_id, start_number in parse_registrations(entry.fields[b"clients"]):
                        record = clients.setdefault(client_id, ClientRecord(client_id))
                        record.number, record.connected = start_number, True
                        record.last_seen = last_seen
                elif entry.op == UPDATE_OP:
                    last_seen = float(entry.fields[b"last_seen"])
                    for client_id, number, given, bye in parse_updates(entry.fields[b"clients"]):
                        record = clients.setdefault(client_id, ClientRecord(client_id))
                        if number is not None:
                            record.number = number
                        if given is not None:
                            record.last_given = given
                        if bye:
                            record.connected = False
                        record.last_seen = last_seen
        if missed:
            values = sorted(values + values_of(b"".join(missed)))
        return Snapshot(last, added, values, clients, calls)

    async def _snapshot_call(
        self, members_after: bytes, members: int, clients_after: bytes, clients: int
    ) -> tuple[bytes, int, bytes, bytes]:
        """One `SNAPSHOT` call: the stream's position and count, members, registry lines."""
        keys = self.keys
        reply = await self._script(
            SNAPSHOT,
            [keys.values, keys.changes, keys.clients],
            [members_after, b"%d" % members, self._client_prefix, clients_after, b"%d" % clients],
            timeout=WHOLE_SNAPSHOT_TIMEOUT if members == -1 else None,
        )
        last, added, blob, lines = reply
        return last, int(added), blob or b"", lines or b""

    async def _entries(self, after: bytes, last: bytes, expected: int) -> list[StreamEntry]:
        """The `expected` entries after `after` up to `last`; `SnapshotSpoilt` if some were trimmed."""
        entries: list[StreamEntry] = []
        start = b"(" + after
        while True:
            reply = await self.redis.execute_command(
                b"XRANGE", self.keys.changes, start, last, b"COUNT", b"%d" % RANGE_PAGE
            )
            page = parse_entries(reply)
            entries += page
            if len(page) < RANGE_PAGE:
                break
            start = b"(" + page[-1].entry
        if len(entries) != expected:
            raise SnapshotSpoilt(
                f"{expected - len(entries)} entries were trimmed while it was read"
            )
        return entries

    async def _script(
        self,
        script: Script,
        keys: Sequence[bytes],
        args: Sequence[bytes],
        timeout: float | None = None,
    ) -> Any:
        """Run a read-only script by its SHA1, sending it whole if Redis does not have it."""
        head = [b"%d" % len(keys), *keys, *args]
        try:
            return await self.redis.execute_command(b"EVALSHA", script.sha, *head, timeout=timeout)
        except Exception as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        return await self.redis.execute_command(b"EVAL", script.source, *head, timeout=timeout)
