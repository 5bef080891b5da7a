"""Run the engine's command line in a separate process and read its progress line by line.

The UI never waits on the model: :class:`EngineProcess` starts ``PythonSlicer -m MedDDPMSynthLib ...``
(any Python with the engine), a reader thread queues its output lines, and the widget calls
:meth:`EngineProcess.poll` from a timer. The engine prints ``PROGRESS DONE TOTAL`` lines
(``--progress-lines``), ``warning: ...`` and one ``error: ...`` line on failure. :meth:`cancel` kills the
whole process tree (its own process group / ``taskkill /T``) and waits for it, within a second.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import MedDDPMSynthLib
from MedDDPMSynthLib.protocol import ERROR, LOG, PROGRESS, WARNING, parse_line  # the engine's line format

ENGINE_PARENT = Path(MedDDPMSynthLib.__file__).resolve().parents[1]  # folder holding the engine package
RUNNING, FINISHED, FAILED, CANCELLED = "running", "finished", "failed", "cancelled"
# Windows process-creation flags (numeric: the subprocess constants exist only on Windows). PythonSlicer.exe
# is a console program: without CREATE_NO_WINDOW each generation opens a console, and closing it kills the job
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` when there is one (inside Slicer ``sys.executable`` is the app), else this
    Python. Raises OSError when there is neither (Slicer started without its launcher, no PythonSlicer on PATH)."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    if sys.executable:  # '' when Slicer could not find PythonSlicer (qSlicerCoreApplication)
        beside = Path(sys.executable).with_name(name)
        if beside.is_file():
            return str(beside)
    found = shutil.which("PythonSlicer") or sys.executable
    if not found:
        raise OSError("no Python interpreter to run the engine: PythonSlicer is not on PATH; start Slicer with its "
                      "launcher (the Slicer executable), not the application binary")
    return found


def engine_environment(env: dict | None = None) -> dict:
    """The engine process's environment: the engine package first on PYTHONPATH, unbuffered UTF-8 output
    (a piped Python on Windows otherwise writes the ANSI code page, which garbles non-ASCII paths)."""
    environment = dict(os.environ if env is None else env)
    paths = [str(ENGINE_PARENT)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    environment["PYTHONUTF8"] = "1"
    return environment


def process_options(os_name: str = os.name) -> dict:
    """Popen options: a new process group / session (to kill the whole tree), and no console on Windows."""
    if os_name != "nt":
        return {"start_new_session": True}
    options = {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    if hasattr(subprocess, "STARTUPINFO"):  # as slicer.util.launchConsoleProcess: the window hidden too
        startupinfo = subprocess.STARTUPINFO()
        startupinfo.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        startupinfo.wShowWindow = 0  # SW_HIDE
        options["startupinfo"] = startupinfo
    return options


def engine_command(arguments: list[str], python: str | None = None) -> list[str]:
    return [python or python_executable(), "-m", "MedDDPMSynthLib", *arguments]


class EngineProcess:
    """One engine command running in the background."""

    def __init__(self, arguments: list[str], python: str | None = None, env: dict | None = None):
        self.command = engine_command(arguments, python)
        self.state = RUNNING
        self.done, self.total = 0, 0
        self.error: str | None = None
        self.warnings: list[str] = []
        self.log: list[str] = []
        self.returncode: int | None = None
        self._first_progress: tuple[float, int] | None = None
        self._lines: queue.Queue = queue.Queue()
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=engine_environment(env), text=True, encoding="utf-8", errors="replace", bufsize=1,
            **process_options())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def poll(self) -> list[tuple[str, object]]:
        """Handle the lines that arrived since the last call; never blocks. Returns them parsed."""
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._finish()
                break
            events.append(self._handle(parse_line(line)))
        return events

    def _handle(self, event):
        kind, value = event
        if kind == PROGRESS:
            self.done, self.total = value
            if self._first_progress is None:
                self._first_progress = (time.monotonic(), self.done)
        elif kind == ERROR:
            self.error = str(value)
        elif kind == WARNING:
            self.warnings.append(str(value))
        if kind != PROGRESS:
            self.log.append(f"{kind}: {value}" if kind != LOG else str(value))
            del self.log[:-200]
        return event

    def _finish(self) -> None:
        self.returncode = self._process.wait()
        if self.state != RUNNING:
            return
        if self.returncode == 0:
            self.state = FINISHED
            return
        self.state = FAILED
        if self.error is None:
            last = next((line for line in reversed(self.log) if line.strip()), "no output")
            self.error = f"the engine stopped unexpectedly (exit code {self.returncode}): {last.strip()}"

    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def eta_seconds(self) -> float | None:
        """Remaining seconds from the step rate since the first progress line (None until known)."""
        if self._first_progress is None or self.done <= self._first_progress[1] or not self.total:
            return None
        started, first = self._first_progress
        rate = (time.monotonic() - started) / (self.done - first)
        return rate * (self.total - self.done)

    def wait(self, timeout: float | None = None, progress=None) -> str:
        """Block until the process ends (for scripts and tests); ``progress(done, total)`` on each step."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == RUNNING:
            for kind, value in self.poll():
                if kind == PROGRESS and progress is not None:
                    progress(*value)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the engine did not finish within {timeout} s")
            time.sleep(0.02)
        return self.state

    def cancel(self, timeout: float = 1.0) -> None:
        """Kill the process and everything it started; returns once they are gone (or after ``timeout``)."""
        if self.state != RUNNING:
            return
        self.state = CANCELLED
        if self._process.poll() is None:
            try:
                if os.name == "nt":
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.pid)], capture_output=True,
                                   timeout=timeout, creationflags=CREATE_NO_WINDOW)
                else:
                    os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                pass
        try:
            self.returncode = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self.returncode = self._process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
