"""numd test suite."""
