"""numd's state in Redis, for several instances that share one registry and one sorted list.

Redis is the single source of truth: every change is one Lua script call that applies it
together with an entry in a change stream (`scripts`). The sorted list is one sorted set
whose members sort bytewise in value order (`encoding`), so 64-bit values never pass
through Redis's doubles or Lua's numbers. `address` turns a ``--db`` value into a typed
address; the embedded SQLite store beside this package stays the default.
"""
