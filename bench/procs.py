"""Starting, pinning, watching and stopping the benchmark's processes.

Every process runs in its own session (process group) so that stopping it also stops what it
spawned (nginx's worker, uvicorn's children); :class:`Processes` stops them all on exit, also on
Ctrl-C. CPU pinning goes through ``taskset`` when it exists and the machine has two cores or more:
the server under test on :data:`GATEWAY_CPU`, upstreams and load generators on :data:`CLIENT_CPU`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLIENT_CPU",
    "CpuWatch",
    "GATEWAY_CPU",
    "Memory",
    "Processes",
    "Started",
    "free_port",
    "machine_busy_seconds",
    "memory",
    "pinned",
    "pinning_available",
    "wait_http_ok",
    "wait_tcp",
]

GATEWAY_CPU = 0
CLIENT_CPU = 1


def pinning_available() -> bool:
    """Whether commands can be pinned: taskset is installed and there are two CPUs to use."""
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed with ``taskset -c cpu`` when pinning is available (taskset execs, so the
    pid stays the command's own)."""
    if not pinning_available():
        return list(argv)
    cpus = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", str(cpus[cpu % len(cpus)]), *argv]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Started:
    """A process started by :class:`Processes`; its output goes to ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 5) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class Processes(contextlib.AbstractContextManager["Processes"]):
    """Owns the processes of one benchmark run and stops every one of them on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Started:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        started = Started(name, popen, log)
        self.started.append(started)
        return started

    def stop(self, process: Started, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if it has not exited after ``timeout``."""
        if process in self.started:
            self.started.remove(process)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            try:
                process.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; stragglers in its group (a worker) get the same signal.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return

    def stop_all(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process)

    def __exit__(self, *exc_info: object) -> None:
        # Ctrl-C during cleanup must not leave half the processes behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)


def wait_tcp(port: int, process: Started, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port; raise if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}: {process.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not listen on port {port} within {timeout:.0f} s: {process.tail()}")


def wait_http_ok(url: str, process: Started, timeout: float = 30.0) -> None:
    """Wait until ``GET url`` answers 2xx; raise if the process dies or the time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}: {process.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if 200 <= response.status < 300:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} not ready at {url} within {timeout:.0f} s ({last}): {process.tail()}")


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree, in MB: now (VmRSS) and at its peak (VmHWM)."""

    rss_mb: float
    peak_mb: float


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return kids


def _status_kb(pid: int, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory(pid: int) -> Memory:
    """VmRSS and VmHWM summed over ``pid`` and its descendants (nginx: master and worker).

    The summed peak is an upper bound of the tree's peak: each process's peak may come at a
    different time. For a single-process server (uvicorn, one worker) it is exact.
    """
    pids = _tree(pid)
    rss = sum(_status_kb(p, "VmRSS") for p in pids)
    peak = sum(_status_kb(p, "VmHWM") for p in pids)
    return Memory(rss / 1024, peak / 1024)


_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue += _children(current)
    return pids


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError, ValueError):
        # Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent running tasks or stolen by the hypervisor since boot.

    Interrupt time is left out: loopback traffic is processed in softirqs that no task is charged
    for, so counting it would report the benchmark's own packets as noise.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + steal) / _TICK


class CpuWatch:
    """How much CPU something other than the benchmark took while it measured (noise).

    ``start()`` and ``stop()`` bracket a measurement; ``stop()`` returns the busy CPU time of the
    whole machine minus that of this process, its reaped children (the load generators) and the
    process trees in ``processes``, in percent of one CPU over the wall time. It is other work on
    a shared machine, or time the hypervisor gave to another guest.
    """

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.started: tuple[float, float, float] | None = None

    def _own(self) -> float:
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        for process in self.processes.started:
            own += sum(_cpu_seconds(pid) for pid in _tree(process.pid))
        return own

    def start(self) -> None:
        self.started = (time.monotonic(), machine_busy_seconds(), self._own())

    def stop(self) -> float | None:
        if self.started is None:
            return None
        wall0, busy0, own0 = self.started
        wall = time.monotonic() - wall0
        foreign = (machine_busy_seconds() - busy0) - (self._own() - own0)
        self.started = None
        return max(0.0, foreign) / wall * 100 if wall > 0 else None
