"""The Lua source of numd's Redis scripts, and the SHA1 each is called by (``EVALSHA``).

Each script applies one change and appends its change-stream entry in one call
(`numd.store.redis.scripts` says why scripts, and what the keys hold). They start
with ``#!lua`` (Redis 7.0 or later), so Redis refuses a writing script whole when
memory is full; the lease renewal alone is ``allow-oom``. No value becomes a Lua
number: members are bytes and numbers travel as decimal strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from numd.store.redis.encoding import MEMBER_BYTES

_STREAM = (
    "redis.call('XADD', KEYS[{key}], 'MAXLEN', '~', ARGV[1], '*', 'op', '{op}', 'instance', ARGV[2]"
)

MERGE = f"""#!lua
-- Add members to the sorted list, all with score 0, with a 'merge' entry holding them
-- (concatenated). KEYS: values, changes. ARGV: maxlen, instance, members...
-- Refuses the whole batch, applying nothing, if a member is not {MEMBER_BYTES} bytes long or
-- is in the list already. unpack() and redis.call() take a few thousand values at most,
-- so the members go in chunks.
local n = #ARGV
for i = 3, n do
  if #ARGV[i] ~= {MEMBER_BYTES} then
    return redis.error_reply('bad-member ' .. (i - 2))
  end
end
for i = 3, n, 500 do
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, i, math.min(i + 499, n)))
  for k = 1, #scores do
    if scores[k] then
      return redis.error_reply('member-collision')
    end
  end
end
for i = 3, n, 500 do
  local args = {{}}
  for k = i, math.min(i + 499, n) do
    args[#args + 1] = '0'
    args[#args + 1] = ARGV[k]
  end
  redis.call('ZADD', KEYS[1], unpack(args))
end
local entry = {_STREAM.format(key=2, op="merge")},
  'members', table.concat(ARGV, '', 3, n))
return {{entry, n - 2}}
"""

CLEAR = f"""#!lua
-- Empty the sorted list (UNLINK frees a large set's memory in the background), with a
-- 'clear' entry. KEYS: values, changes. ARGV: maxlen, instance. Returns the entry ID
-- and how many values there were.
local n = redis.call('ZCARD', KEYS[1])
redis.call('UNLINK', KEYS[1])
local entry = {_STREAM.format(key=2, op="clear")})
return {{entry, n}}
"""

REGISTER = f"""#!lua
-- Register a client on this instance: take its lease (SET NX with an expiry), mark it
-- connected, and return its start number (0 for a new ID), with a 'register' entry.
-- KEYS: lease, client, clients, changes. ARGV: maxlen, instance, id, lease ms, now.
-- Refuses with id-in-use, changing nothing, while any instance (this one too) holds it.
if not redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4], 'NX') then
  return redis.error_reply('id-in-use')
end
local number = redis.call('HGET', KEYS[2], 'number') or '0'
redis.call('HSET', KEYS[2], 'number', number, 'connected', '1', 'last_seen', ARGV[5],
  'instance', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
local entry = {_STREAM.format(key=4, op="register")},
  'id', ARGV[3], 'number', number, 'last_seen', ARGV[5])
return {{entry, number}}
"""

RENEW = """#!lua flags=allow-oom
-- Extend the leases this instance holds to the lease time from now.
-- KEYS: leases. ARGV: instance, lease ms. Returns the positions (from 1) of the leases
-- it no longer holds (expired, or taken by another instance): those are not extended.
local lost = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

DISCONNECT = f"""#!lua
-- A client's connection to this instance ended: free its lease and mark it disconnected,
-- with a 'disconnect' entry. KEYS: lease, client, changes. ARGV: maxlen, instance, id, now.
-- If another instance holds the lease, or the client is not connected here, nothing
-- changes and the answer is ''. (A lease that expired while the client stayed marked
-- connected here is still marked disconnected.)
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[2] then
  redis.call('DEL', KEYS[1])
elseif holder or redis.call('HGET', KEYS[2], 'instance') ~= ARGV[2]
    or redis.call('HGET', KEYS[2], 'connected') ~= '1' then
  return ''
end
redis.call('HSET', KEYS[2], 'connected', '0', 'last_seen', ARGV[4])
return {_STREAM.format(key=3, op="disconnect")}, 'id', ARGV[3], 'last_seen', ARGV[4])
"""

REPORT = f"""#!lua
-- Record the number a client reported, with a 'report' entry.
-- KEYS: lease, client, changes. ARGV: maxlen, instance, id, number, now.
-- Refuses with lease-lost, changing nothing, unless this instance holds the client's lease.
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return redis.error_reply('lease-lost')
end
redis.call('HSET', KEYS[2], 'number', ARGV[4], 'last_seen', ARGV[5])
return {_STREAM.format(key=3, op="report")}, 'id', ARGV[3], 'number', ARGV[4],
  'last_seen', ARGV[5])
"""

GIVE = f"""#!lua
-- Record the even/odd number this instance gave a client, with a 'give' entry.
-- KEYS: lease, client, changes. ARGV: maxlen, instance, id, number, now.
-- Refuses with lease-lost, changing nothing, unless this instance holds the client's lease.
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return redis.error_reply('lease-lost')
end
redis.call('HSET', KEYS[2], 'last_given', ARGV[4], 'last_seen', ARGV[5])
return {_STREAM.format(key=3, op="give")}, 'id', ARGV[3], 'last_given', ARGV[4],
  'last_seen', ARGV[5])
"""

UPDATE = f"""#!lua
-- Several clients' reports, given numbers and disconnects, made on this instance since its
-- last update, with one 'update' entry listing them. KEYS: changes, then per client its lease
-- and its hash. ARGV: maxlen, instance, now, then per client: id, number ('' if none), last
-- given ('' if none), '1' if it disconnected (else '0').
-- A client whose lease this instance does not hold is skipped and returned as lost (its
-- connection here is stale); a disconnect then marks it disconnected only if it is still
-- marked connected here, as DISCONNECT does. The entry's 'clients' field has one line per
-- client applied: 'id number given bye', '-' for none. Returns the entry ID ('' if nothing
-- was applied) and the lost IDs.
local lines, lost = {{}}, {{}}
for i = 0, (#KEYS - 1) / 2 - 1 do
  local lease, hash = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local id, number, given, bye = ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i], ARGV[7 + 4 * i]
  local holder = redis.call('GET', lease)
  local apply = holder == ARGV[2]
  if not apply then
    lost[#lost + 1] = id
    if bye == '1' and not holder and redis.call('HGET', hash, 'instance') == ARGV[2]
        and redis.call('HGET', hash, 'connected') == '1' then
      apply, number, given = true, '', ''
    end
  end
  if apply then
    local fields = {{'last_seen', ARGV[3]}}
    if number ~= '' then fields[#fields + 1] = 'number'; fields[#fields + 1] = number end
    if given ~= '' then fields[#fields + 1] = 'last_given'; fields[#fields + 1] = given end
    if bye == '1' then
      fields[#fields + 1] = 'connected'; fields[#fields + 1] = '0'
      if holder == ARGV[2] then redis.call('DEL', lease) end
    end
    redis.call('HSET', hash, unpack(fields))
    lines[#lines + 1] = id .. ' ' .. (number ~= '' and number or '-') .. ' '
      .. (given ~= '' and given or '-') .. ' ' .. bye
  end
end
local entry = ''
if #lines > 0 then
  entry = {_STREAM.format(key=1, op="update")},
    'clients', table.concat(lines, '\\n'), 'last_seen', ARGV[3])
end
return {{entry, lost}}
"""

REGISTER_MANY = f"""#!lua
-- Register several clients on this instance, as REGISTER does each, with one 'register-many'
-- entry listing those registered ('id number' a line). KEYS: changes, clients, then per client
-- its lease and its hash. ARGV: maxlen, instance, lease ms, now, then the ids. Returns the
-- entry ID ('' if none registered), then per client its start number, or '' while any
-- instance (this one too) holds its lease (id-in-use: nothing changed for it).
local lines, results = {{}}, {{}}
for i = 5, #ARGV do
  local lease, hash, id = KEYS[2 * (i - 5) + 3], KEYS[2 * (i - 5) + 4], ARGV[i]
  if redis.call('SET', lease, ARGV[2], 'PX', ARGV[3], 'NX') then
    local number = redis.call('HGET', hash, 'number') or '0'
    redis.call('HSET', hash, 'number', number, 'connected', '1', 'last_seen', ARGV[4],
      'instance', ARGV[2])
    redis.call('ZADD', KEYS[2], id, id)
    lines[#lines + 1] = id .. ' ' .. number
    results[#results + 1] = number
  else
    results[#results + 1] = ''
  end
end
local entry = ''
if #lines > 0 then
  entry = {_STREAM.format(key=1, op="register-many")},
    'clients', table.concat(lines, '\\n'), 'last_seen', ARGV[4])
end
table.insert(results, 1, entry)
return results
"""

HEARTBEAT = """#!lua
-- An instance says it is alive (for its time to live) with what it reports of itself, and
-- reads the instances alive. KEYS: instances (a sorted set scored by expiry time, in ms),
-- instance info (a hash). ARGV: instance, time to live in ms (0: it is leaving), info.
-- Forgets instances whose time ran out. Returns the info of each instance alive.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local gone = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE')
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local alive = redis.call('ZRANGE', KEYS[1], 0, -1)
if #alive == 0 then
  return {}
end
return redis.call('HMGET', KEYS[2], unpack(alive))
"""


@dataclass(frozen=True)
class Script:
    """One Lua script and the SHA1 that ``EVALSHA`` names it by."""

    name: str
    source: bytes

    @property
    def sha(self) -> bytes:
        """The script's SHA1, in hex, as Redis computes it."""
        return hashlib.sha1(self.source).hexdigest().encode()


SCRIPTS = {
    name: Script(name, source.encode())
    for name, source in [
        ("merge", MERGE),
        ("clear", CLEAR),
        ("register", REGISTER),
        ("renew", RENEW),
        ("disconnect", DISCONNECT),
        ("report", REPORT),
        ("give", GIVE),
        ("update", UPDATE),
        ("heartbeat", HEARTBEAT),
        ("register-many", REGISTER_MANY),
    ]
}
