"""Child processes: free ports, CPU pinning, start/stop, readiness polling and RSS."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from devkit.procs import eventually
from devkit.procs import free_port as free_port

# Core 0 runs the system under test; core 1 runs everything that serves or measures it.
SUT_CORE = 0
HELPER_CORE = 1


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(argv: Sequence[str], core: int) -> list[str]:
    """Prefix ``argv`` with ``taskset -c core`` when taskset exists and the core does."""
    if shutil.which("taskset") and core < cpu_count():
        return ["taskset", "-c", str(core), *argv]
    return list(argv)


def pin_self(core: int) -> None:
    """Keep the orchestrator itself off the core under test."""
    if core < cpu_count():
        os.sched_setaffinity(0, {core})


class Proc:
    """One started child process with its log file; stopped by its own pid only."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_description(self) -> str:
        code = self.popen.returncode
        if code is None:
            return "is running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name} (not sent by the benchmark)"
        return f"exited with status {code}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process (it stops its own workers), then SIGKILL what is left."""
        if self.alive():
            tree = process_tree(self.pid)
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            for pid in tree:
                if pid != self.pid and _exists(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self._log.close()


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all of its descendants."""
    children = _children_map()
    out: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def tree_rss_bytes(root: int) -> int:
    """VmRSS summed over ``root`` and its descendants."""
    return sum(rss_bytes(pid) for pid in process_tree(root))


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    def probe() -> bool:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} {proc.exit_description()} while waiting for {what}; "
                f"log {proc.log_path}:\n{proc.log_tail()}"
            )
        return check()

    try:
        eventually(probe, what, timeout, interval=0.1)
    except TimeoutError as exc:
        tail = f"; log {proc.log_path}:\n{proc.log_tail()}" if proc is not None else ""
        raise RuntimeError(f"{exc}{tail}") from None


def http_status(url: str, headers: Mapping[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def http_post(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def cpu_seconds(root: int) -> float:
    """User plus system CPU time of ``root`` and its descendants."""
    ticks = 0
    for pid in process_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def core_times(core: int) -> tuple[float, float]:
    """(busy, total) seconds of one core since boot, from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]
            return (sum(values) - idle) / ticks, sum(values) / ticks
    return 0.0, 0.0


class CpuMeter:
    """Share of one core used by a process tree, and how busy its core was, over a span."""

    def __init__(self, root: int | None, core: int) -> None:
        self.root = root
        self.core = core
        self._proc = cpu_seconds(root) if root else 0.0
        self._busy, self._total = core_times(core)

    def read(self) -> dict[str, float]:
        busy, total = core_times(self.core)
        span = max(total - self._total, 1e-9)
        out = {"core_busy": round((busy - self._busy) / span, 3)}
        if self.root:
            out["proc_cpu"] = round((cpu_seconds(self.root) - self._proc) / span, 3)
        return out
