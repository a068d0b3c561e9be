"""The job queue: `JobQueue` holds the rules (leases, retries, attempts, cancel) and calls a
`Connector`, the backend: `SqlConnector` on the app's PostgreSQL or SQLite store, or
`InMemoryConnector` for tests. The API builds one per request over its session (app/api/deps.py)."""

from .connector import Connector, Event, JobState, LeaseLost
from .jobqueue import JobQueue
from .memory import InMemoryConnector
from .placement import Capabilities, gpus_needed
from .sql import SqlConnector

__all__ = [
    "Capabilities",
    "Connector",
    "Event",
    "InMemoryConnector",
    "JobQueue",
    "JobState",
    "LeaseLost",
    "SqlConnector",
    "gpus_needed",
]
