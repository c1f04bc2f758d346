"""The counter client (``numd-client`` and ``twistd numd-client``): its protocol, array mode,
console, output, tap and test doubles. It shares only wire helpers with the server."""
