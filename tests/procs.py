"""Real PoseKD processes for the scale-out tests: `posekd serve` in Redis mode, `posekd worker`, and a
private `redis-server` that a test may stop and restart."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A child process whose output goes to a log file (shown when a test fails)."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self._out = open(log, "wb")
        self.popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 20) -> int | None:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)
        finally:
            self._out.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(check, timeout: float, what: str, proc: Proc | None = None, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # not up yet (connection refused and the like)
            pass
        if proc is not None and not proc.alive():
            raise AssertionError(f"{what}: the process exited\n{proc.tail()}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}\n{proc.tail() if proc else ''}")


def service_env(store: Path, redis_url: str, prefix: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEKD_")}
    env.update({
        "POSEKD_MODEL_STORE": str(store), "POSEKD_REDIS_URL": redis_url, "POSEKD_REDIS_PREFIX": prefix,
        "POSEKD_DEFAULT_POSE_MODEL": "tiny-pose", "POSEKD_DEFAULT_DETECTOR": "tiny-det",
        "POSEKD_STORE_POLL_S": "0", "POSEKD_ORT_INTRA_THREADS": "1", "POSEKD_MIN_SCORE": "0",
        "POSEKD_WORKER_HEARTBEAT_S": "0.5", "POSEKD_WORKER_STALE_S": "3",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(env: dict, name: str, logs: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "service.cli", "worker", "--name", name, "--metrics-port", str(port)],
                env, logs / f"{name}.log")
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200, 30,
               f"worker {name} metrics", proc)
    return proc, port


def start_api(env: dict, logs: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, logs / "api.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/readyz", timeout=1).status_code == 200, 30, "API ready", proc)
    return proc, base


def metric(port_or_base, name: str, labels: str = "") -> float:
    """Sum of a Prometheus sample (``name{labels}``) scraped from a worker port or an API base URL."""
    url = port_or_base if isinstance(port_or_base, str) else f"http://127.0.0.1:{port_or_base}"
    text = httpx.get(url + "/metrics", timeout=2).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            head, value = line.rsplit(" ", 1)
            if head.split("{")[0] == name:
                total += float(value)
    return total


class RedisServer:
    """A redis-server of the test's own on a free port, to stop and start again."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        wait_until(lambda: redis.Redis(port=self.port, socket_connect_timeout=0.5).ping(), 10, "redis-server")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
