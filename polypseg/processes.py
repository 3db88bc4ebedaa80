"""Which process owns a run or a trial, and whether it still lives.

A killed `polypseg` process cannot end its MLflow runs or Optuna trials, so each records its
worker: host, pid, start time (pids are reused) and machine (whose process table the pid is
in). On the same machine the process table tells a dead worker at once; on another, its
heartbeat (`POLYPSEG_HEARTBEAT=interval,grace`, seconds) silent for longer than the grace.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psutil

from polypseg.errors import PolypsegError

WORKER_KEY = "polypseg.worker"  # host:pid
STARTED_KEY = "polypseg.worker_started"  # the process's start time, Unix seconds
MACHINE_KEY = "polypseg.worker_machine"  # see `this_machine`
HEARTBEAT_ENV = "POLYPSEG_HEARTBEAT"
# Seconds between heartbeats, and without one before a worker counts as dead. Heartbeats come
# from a thread, so a long epoch never delays them: a minute of silence means a dead worker.
DEFAULT_HEARTBEAT = (20, 60)
# psutil derives a start time from boot time and clock ticks: the same process always gives the
# same value to well within this, and a pid is never reused within a second.
SAME_START = 1.0


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS keeps one (a
    container's CPU set is smaller than the machine), else every core."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace period) in seconds: `POLYPSEG_HEARTBEAT=interval,grace`, else 20,60."""
    text = os.environ.get(HEARTBEAT_ENV)
    if not text:
        return DEFAULT_HEARTBEAT
    try:
        interval, grace = (int(part) for part in text.split(","))
    except ValueError:
        interval = grace = 0
    if not 0 < interval < grace:
        raise PolypsegError(
            f"{HEARTBEAT_ENV}={text!r}: expected interval,grace in whole seconds with "
            f"0 < interval < grace, like 20,60"
        )
    return interval, grace


@contextmanager
def beating(interval: float, beat: Callable[[], None], name: str, join: bool) -> Iterator[None]:
    """Call `beat` every `interval` seconds while the block runs: from a thread, so a long epoch
    never delays it. `join=False` leaves a beat stuck in a server's retries behind."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            beat()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join:
            thread.join()


@dataclass(frozen=True)
class Worker:
    """A process somewhere: its host name, pid, start time (Unix seconds) and machine."""

    host: str
    pid: int
    started: float
    machine: str

    @staticmethod
    def current() -> Worker:
        pid = os.getpid()  # asked each time: a forked child is a worker of its own
        return Worker(socket.gethostname(), pid, psutil.Process(pid).create_time(), this_machine())

    def tags(self) -> dict[str, str]:
        """As MLflow tags or Optuna user attributes (both hold strings)."""
        return {
            WORKER_KEY: f"{self.host}:{self.pid}",
            STARTED_KEY: f"{self.started:.3f}",
            MACHINE_KEY: self.machine,
        }

    @staticmethod
    def from_tags(tags: Mapping[str, object]) -> Worker | None:
        """The worker recorded in `tags`; None when there is none (another tool's run)."""
        try:
            host, pid = str(tags[WORKER_KEY]).rsplit(":", 1)
            return Worker(host, int(pid), float(str(tags[STARTED_KEY])), str(tags[MACHINE_KEY]))
        except (KeyError, ValueError):
            return None

    def is_gone(self, last_beat: float | None, grace: float) -> bool:
        """Whether this worker is dead. On this machine: its process no longer exists (or the
        pid now belongs to a later process). Elsewhere: its last sign of life (`last_beat`, Unix
        seconds) is older than `grace`; without one, it cannot be judged, so it lives."""
        if self.machine != this_machine():
            return last_beat is not None and time.time() - last_beat > grace
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
                return True
            return abs(process.create_time() - self.started) > SAME_START
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:  # someone else's process: it exists, so it lives
            return False


@cache
def this_machine() -> str:
    """Which process table our pids belong to: the kernel's boot id and our pid namespace.

    Host names repeat (containers, cloned VMs), so they cannot tell whether a pid is ours to
    look up; a boot id is unique per machine and boot, and containers on one kernel that see
    different process tables have different pid namespaces.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: the host name and boot time are the best we have
        boot, namespace = socket.gethostname(), str(psutil.boot_time())
    return hashlib.sha256(f"{boot}/{namespace}".encode()).hexdigest()[:16]
