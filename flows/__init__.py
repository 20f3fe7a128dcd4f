"""Prefect flows and their command lines.

Environment defaults set here, before Prefect is imported by any flow module
(each one yields to a value the user set):

- Lightning's log lines go to the Prefect run logs;
- the temporary local server sends no telemetry (its heartbeat hits
  "database is locked" on SQLite while symbols are being written);
- the temporary server may take 2 minutes to start: Prefect's 20 s default
  was seen to time out on a loaded 2-core machine, failing the run before any
  work.
"""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pytorch_lightning")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
