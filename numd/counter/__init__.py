"""The counter protocol: its factory (`protocol`) and connections (`connection`), their memory
budget (`budget`), tokens (`tokens`) and framing (`framing`), direct writes, array replies, the
held-reply queue (`held`), and the older array clients' pickle listener (`legacy_array`,
`pickles`).

Imports nothing, so the counter client can take the grammar and the framing alone."""
