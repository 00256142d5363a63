"""A trial's command as a process group that can be stopped as a whole.

Each trial runs in its own session (and so its own process group), so a stop reaches every
process it started: DDP/torchrun workers, shell pipelines, ``sleep`` grandchildren. Some of
those leave the group: torchrun (since torch 2.2) starts each worker in a session of its own, as
does anything run with ``setsid``. So the trial's environment also carries a mark of its own
(``SWEEPER_TRIAL_PROCESS``), which every process it starts inherits, and at the trial's end the
processes that carry it are ended with the group.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Exit code for a command that could not be started, as a shell reports it.
EXIT_CANNOT_START = 127
#: The environment variable that marks every process of one trial, whatever its session.
MARK_VARIABLE = "SWEEPER_TRIAL_PROCESS"

_WAIT_STEP = 0.02


class TrialProcess:
    """A running (or finished) trial command. Create with :meth:`start`."""

    def __init__(
        self, popen: subprocess.Popen[bytes] | None, *, returncode: int | None = None, mark: str = ""
    ) -> None:
        self._popen = popen
        self._returncode = returncode
        self._group_reaped = popen is None
        self.mark = mark  # MARK_VARIABLE's value in the trial's environment

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str],
        stdout_path: str | os.PathLike[str],
        stderr_path: str | os.PathLike[str],
    ) -> TrialProcess:
        """Start ``argv``; a command that cannot start yields exit code 127 and says why in stderr."""
        argv = [str(a) for a in argv]
        mark = secrets.token_hex(8)
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            if not argv:
                err.write(b"sweeper: cannot start the trial: the command is empty\n")
                return cls(None, returncode=EXIT_CANNOT_START)
            try:
                popen = subprocess.Popen(
                    argv,
                    env={**env, MARK_VARIABLE: mark},
                    cwd=os.fspath(cwd),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                err.write(f"sweeper: cannot start {argv[0]!r}: {reason}\n".encode())
                return cls(None, returncode=EXIT_CANNOT_START)
        return cls(popen, mark=mark)

    @property
    def pid(self) -> int | None:
        """The main process's id (also its process group's id); None if it never started."""
        return self._popen.pid if self._popen is not None else None

    @property
    def started(self) -> bool:
        return self._popen is not None

    def poll(self) -> int | None:
        """The exit code once the main process has ended (negative: killed by that signal)."""
        if self._popen is None:
            return self._returncode
        code = self._popen.poll()
        if code is not None:
            self._returncode = code
            # Whatever the main process left behind must not outlive the trial.
            self._kill_group()
        return code

    def join(self) -> None:
        """Block until the main process has ended, without collecting its exit status: the thread
        that polls stays the one that does, so no signal can go to its pid once the system may
        have given it to another process. Any thread may call this."""
        if self._popen is None:
            return
        if not hasattr(os, "waitid"):  # not on every system: there, Popen's own wait (which reaps)
            self._popen.wait()
            return
        try:
            os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # already collected by poll()
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the main process; its exit code or None."""
        if self._popen is None:
            return self._returncode
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll()

    def terminate(self, grace: float, hurry: threading.Event | None = None) -> int:
        """SIGTERM the script, then the rest of its group, SIGKILL the group after ``grace`` seconds,
        or as soon as ``hurry`` is set (a person who will not wait); the exit code.

        The script is signalled first and gets up to half the grace period alone, so helpers it
        relies on to shut down cleanly (a tracker's service process flushing the run, a launcher
        forwarding the signal to its workers) are still there while it does. It is not signalled
        again: a second SIGTERM would start its handler over.
        """
        if self._popen is None:
            return self._returncode if self._returncode is not None else EXIT_CANNOT_START
        code = self._popen.poll()
        if code is None:
            began = time.monotonic()
            deadline = began + max(grace, 0.0)
            self._popen.send_signal(signal.SIGTERM)
            code = self._wait_until(began + max(grace, 0.0) / 2, hurry)
            if code is None:  # the script is still shutting down: its helpers only, not it again
                self._signal_helpers(signal.SIGTERM)
            else:
                self._signal_group(signal.SIGTERM)
            if code is None:
                code = self._wait_until(deadline, hurry)
            # Children that handle SIGTERM get the rest of the grace period too.
            while code is not None and self._group_alive() and time.monotonic() < deadline:
                if hurry is not None and hurry.is_set():
                    break
                time.sleep(_WAIT_STEP)
            if code is None:
                self._signal_group(signal.SIGKILL)
                code = self._popen.wait()
        self._returncode = code
        self._kill_group()
        return code

    def _wait_until(self, deadline: float, hurry: threading.Event | None) -> int | None:
        """The main process's exit code once it exits before ``deadline`` (monotonic) and before
        ``hurry`` is set; else None."""
        assert self._popen is not None
        while True:
            left = deadline - time.monotonic()
            try:
                return self._popen.wait(max(left if hurry is None else min(left, _WAIT_STEP), 0.0))
            except subprocess.TimeoutExpired:
                if left <= 0 or (hurry is not None and hurry.is_set()):
                    return None

    def kill(self) -> int:
        """SIGKILL the whole group now."""
        if self._popen is not None and self._popen.poll() is None:
            self._signal_group(signal.SIGKILL)
        return self.terminate(0.0)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        try:
            os.killpg(self._popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_helpers(self, sig: signal.Signals) -> None:
        """Every process of the group but the script: a second SIGTERM would start its handler
        (saving a checkpoint, a launcher's shutdown) over again. Where the group's members cannot
        be listed, the whole group."""
        assert self._popen is not None
        members = group_members(self._popen.pid)
        if members is None or self._popen.pid not in members:  # /proc cannot tell us who is there
            self._signal_group(sig)
            return
        signal_pids((pid for pid in members if pid != self._popen.pid), sig)

    def _group_alive(self) -> bool:
        assert self._popen is not None
        try:
            os.killpg(self._popen.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _kill_group(self) -> None:
        # The group id stays reserved while any member lives, so it cannot name a stranger's group.
        if not self._group_reaped:
            self._signal_group(signal.SIGKILL)
            self._group_reaped = True
            left = marked_processes(self.mark).get(self.mark, [])  # those that left the group
            signal_pids(left, signal.SIGKILL)


def marked_processes(*marks: str) -> dict[str, list[int]]:
    """The processes (this user's, from /proc) whose environment carries each of ``marks`` as
    :data:`MARK_VARIABLE`, by mark; only marks some process carries. One pass over /proc."""
    prefix = f"{MARK_VARIABLE}=".encode()
    wanted = {mark.encode() for mark in marks if mark}
    found: dict[str, list[int]] = {}
    for pid, environ in (_each_process("environ") if wanted else None) or ():  # None: no /proc
        for entry in environ.split(b"\0"):
            if entry.startswith(prefix) and entry[len(prefix) :] in wanted:
                found.setdefault(entry[len(prefix) :].decode(), []).append(pid)
    return found


def this_agent() -> dict[str, Any]:
    """What a record this process writes says of it: its host, its process id, and the PID
    namespace that id means something in."""
    return {"host": socket.gethostname(), "agent_pid": os.getpid(), "pid_ns": pid_namespace()}


def seen_from_here(record: Mapping[str, Any]) -> bool:
    """Whether the process a record of :func:`this_agent` names can be looked up from here: it ran
    on this machine, in this PID namespace (containers sharing a folder often share a hostname,
    and a process id too, 1 or 2 under an init, each in a namespace of its own)."""
    ns = record.get("pid_ns")
    return record.get("host") == socket.gethostname() and (ns is None or ns == pid_namespace())


@functools.cache
def pid_namespace() -> str | None:
    """This process's PID namespace ('pid:[4026531836]'); None where there are none to tell."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def pid_exists(pid: int) -> bool:
    """Whether a process with this id runs on this machine (anyone's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to judge
        return True
    return True


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids`` that is still there and ours to signal."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def group_members(pgid: int) -> list[int] | None:
    """The processes of process group ``pgid``, from /proc (Linux); None where /proc cannot tell."""
    found = _each_process("stat")
    if found is None:
        return None
    members = []
    for pid, stat in found:
        fields = stat.rsplit(b")", 1)[-1].split()  # state, ppid, pgrp, ... after the command name
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(pid)
    return members


def _each_process(entry: str) -> list[tuple[int, bytes]] | None:
    """``/proc/<pid>/<entry>`` of every process this user may read; None without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    found = []
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/{entry}", "rb") as fh:
                    found.append((int(name), fh.read()))
            except OSError:  # ended meanwhile, or another user's
                continue
    return found


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL (exit code -9)``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit code {code})"
    return f"exit code {code}"
