"""A private redis-server process on a free port, for tests and benchmarks:

    server = RedisServer(tmp_path).start()  # RedisUnavailable if redis-server is missing
    ...  # talk to server.url
    server.stop()

Tests use a real Redis, never a fake (see tests/conftest.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not start."""


@dataclass
class RedisServer:
    """A private redis-server process in `workdir` (tests, `benchmarks.swap`).

    Without `persist` it keeps nothing on disk; with it, `stop` saves the data set to
    `workdir` and the next `start` (same port) loads it back, as a restarted Redis would."""

    workdir: Path
    port: int = 0
    persist: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start on a free port, or again on the same port after `stop` (a restart)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisUnavailable(
                "redis-server is not installed: tests use a real Redis "
                "(`sudo .ci/tools` installs it, or set REDIS_URL)"
            )
        self.port = self.port or free_port()
        save = ["--save", "3600 1"] if self.persist else ["--save", ""]
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", *save,
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RedisUnavailable(
                        f"redis-server did not start on port {self.port}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()
        return self

    def stop(self) -> None:
        """Stop the server (saving its data first when `persist`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.persist:
            client = redis.Redis(port=self.port, socket_connect_timeout=1)
            try:
                client.shutdown(save=True)
            except redis.ConnectionError:
                pass  # the expected answer to SHUTDOWN: the connection closes
            finally:
                client.close()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
