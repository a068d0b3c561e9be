"""The profiling service: REST API, job queue with leases, SQLite/PostgreSQL store. Never imports torch."""
