"""The counter protocol: its connections and their factory, tokens and framing, direct writes,
array replies, and the older array clients' pickle listener."""
