"""Run an app with uvicorn, stopping gracefully on SIGTERM (and Ctrl-C).

On SIGTERM uvicorn stops accepting connections and waits for the responses in flight (streams
included) up to `graceful_timeout`; then the app's lifespan waits for the engine's requests and
closes the engine. The process then exits with status 0.
"""

from __future__ import annotations

import logging
import signal

from fastapi import FastAPI


def run_server(app: FastAPI, host: str, port: int, *, graceful_timeout: float = 60.0,
               log_level: str = "info") -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a graceful stop)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout, server_header=False,
                            proxy_headers=False, ws="none")
    server = uvicorn.Server(config)
    logging.getLogger("llavakit.serve").setLevel(log_level.upper())
    # uvicorn re-raises a caught signal after its graceful shutdown, into the handler that was
    # installed before it started; SIGTERM's default would kill us (status -15) after a clean stop.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else 1


def _stopped(signum, frame) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and benchmarks)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn_server(arguments: list[str], *, host: str = "127.0.0.1", port: int | None = None,
                 timeout: float = 120.0, env: dict | None = None, log=None):
    """Start `llavakit serve ARGUMENTS` in a subprocess and wait until /health answers.

    Returns (process, base URL). For tests and benchmarks; the caller stops the process.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = port or free_port(host)
    process = subprocess.Popen([sys.executable, "-m", "llavakit.cli", "serve", "--host", host, "--port", str(port),
                                *arguments], stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    url = f"http://{host}:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        try:
            with opener.open(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"the server did not answer on {url} within {timeout:g} s")
