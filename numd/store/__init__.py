"""The embedded SQLite store: schema and migrations, the database, batches, and the Store service."""
