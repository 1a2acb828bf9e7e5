"""Prefect set-up shared by the commands: quiet logs, the embedded server, early boot.

With no ``PREFECT_API_URL`` configured, Prefect starts a temporary local server for the run
(nothing to start by hand). With one configured (``prefect server start`` elsewhere, or
Prefect Cloud), flows report there and show in its UI.
"""

from __future__ import annotations

import os
import threading


def configure_for_cli() -> None:
    """Environment defaults for a command-line run (the user's settings win)."""
    # Prefect on the terminal: warnings only; each command prints its own summary.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # the temporary server's telemetry heartbeat only costs start-up time (and, with several
    # runs sharing ~/.prefect/prefect.db, prints "database is locked" tracebacks)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def start_server_early() -> threading.Thread | None:
    """Boot Prefect's temporary server in the background (when no PREFECT_API_URL is set).

    It is the same server the flow would start on its own (Prefect keeps one instance per
    process); starting it early lets its boot overlap with other start-up work. Join the
    returned thread before running a flow.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None

    def boot() -> None:
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()

    thread = threading.Thread(target=boot, name="prefect-server-boot", daemon=True)
    thread.start()
    return thread
