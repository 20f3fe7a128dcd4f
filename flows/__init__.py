"""Prefect flows and their command lines.

Environment defaults set here, before Prefect is imported by any flow module:
Lightning's log lines go to the Prefect run logs, and the temporary local
server sends no telemetry (its heartbeat hits "database is locked" on SQLite
while symbols are being written).
"""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pytorch_lightning")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
