"""TLS on numd's listeners: an ``ssl:`` endpoint's key and certificate files, checked before start
(`endpoints`).

Imports nothing, as every package of numd."""
