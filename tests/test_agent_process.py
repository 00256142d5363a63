"""TrialProcess: a trial's command as a process group, stopped as a whole."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from process_support import alive, wait_until
from sweeper.agents.process import EXIT_CANNOT_START, TrialProcess, describe_exit, group_members
from sweeper.agents.stderr import stderr_tail

SCRIPTS = Path(__file__).parent / "scripts"
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(1000)"
)


def read_pid(path: Path) -> int:
    assert wait_until(path.exists), f"{path} was never written"
    return int(path.read_text())


def start(tmp_path: Path, argv: list[str]) -> TrialProcess:
    return TrialProcess.start(
        argv,
        env=dict(os.environ),
        cwd=tmp_path,
        stdout_path=tmp_path / "stdout.log",
        stderr_path=tmp_path / "stderr.log",
    )


def test_exit_codes_and_output_files(tmp_path: Path) -> None:
    ok = start(tmp_path, [sys.executable, "-c", "print('hello'); import sys; print('oops', file=sys.stderr)"])
    assert ok.wait(30) == 0
    assert (tmp_path / "stdout.log").read_text() == "hello\n"
    assert stderr_tail(tmp_path / "stderr.log") == "oops"

    bad = start(tmp_path, [sys.executable, "-c", "import sys; sys.exit(3)"])
    assert bad.wait(30) == 3
    assert bad.poll() == 3


def test_runs_in_its_own_process_group(tmp_path: Path) -> None:
    proc = start(tmp_path, [sys.executable, "-c", "import time; time.sleep(1000)"])
    try:
        assert proc.pid is not None
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert proc.poll() is None
    finally:
        assert proc.terminate(grace=5) == -signal.SIGTERM


def test_terminate_kills_a_grandchild_that_ignores_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = start(tmp_path, [sys.executable, str(SCRIPTS / "group_leader.py"), str(pid_file), "wait"])
    grandchild = read_pid(pid_file)
    assert alive(grandchild)

    code = proc.terminate(grace=0.5)

    assert code == -signal.SIGTERM  # the leader obeyed SIGTERM ...
    assert wait_until(lambda: not alive(grandchild))  # ... and the stubborn grandchild got SIGKILL


def test_leader_that_ignores_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    code = IGNORES_SIGTERM
    proc = start(tmp_path, [sys.executable, "-c", code])
    assert wait_until(lambda: (tmp_path / "stdout.log").read_text() == "ready\n")
    assert proc.terminate(grace=0.2) == -signal.SIGKILL


def test_sigterm_handler_gets_to_exit_cleanly(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    proc = start(tmp_path, [sys.executable, "-c", code])
    assert wait_until(lambda: (tmp_path / "stdout.log").read_text() == "ready\n")
    assert proc.terminate(grace=30) == 0


def start_with_helper(tmp_path: Path, on_term_body: str) -> TrialProcess:
    """A script with a helper process (as wandb's service is) and a SIGTERM handler whose body is
    ``on_term_body`` (``helper`` and ``received``, the signals so far, in scope); once it is ready."""
    code = (
        "import signal, subprocess, sys, time\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])\n"
        "received = []\n"
        "def on_term(*a):\n"
        f"{on_term_body}"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    proc = start(tmp_path, [sys.executable, "-c", code])
    assert wait_until(lambda: (tmp_path / "stdout.log").read_text() == "ready\n")
    return proc


def test_the_script_is_signalled_before_its_helpers(tmp_path: Path) -> None:
    # A helper process (as wandb's service is) must outlive the script's own SIGTERM handling.
    proc = start_with_helper(
        tmp_path,
        "    time.sleep(0.3)\n"
        "    state = 'alive' if helper.poll() is None else 'gone'\n"
        "    open('helper_at_exit.txt', 'w').write(state)\n"
        "    sys.exit(0)\n",
    )
    assert proc.terminate(grace=10) == 0
    assert (tmp_path / "helper_at_exit.txt").read_text() == "alive"
    assert not proc._group_alive()  # and the helper went with the group afterwards


def test_the_script_gets_one_sigterm_while_its_helpers_get_theirs(tmp_path: Path) -> None:
    # A handler that saves for longer than half the grace period: a second SIGTERM would start it
    # over in the middle of its save. Its helper still gets SIGTERM, and the group ends.
    proc = start_with_helper(
        tmp_path,
        "    received.append(1)\n"
        "    if len(received) == 1:\n"
        "        time.sleep(2.0)\n"
        "        open('signals.txt', 'w').write(str(len(received)))\n"
        "        sys.exit(0)\n",
    )
    members = group_members(proc.pid)
    assert members is not None and proc.pid in members and len(members) == 2
    helper = next(pid for pid in members if pid != proc.pid)
    # Half the grace period is 1.5 s: the save outlasts it, and ends well before the grace period
    # does, also on a loaded machine.
    assert proc.terminate(grace=3.0) == 0
    assert (tmp_path / "signals.txt").read_text() == "1"
    assert not alive(helper)


def test_a_child_in_a_session_of_its_own_ends_with_the_trial(tmp_path: Path) -> None:
    # As torchrun (torch >= 2.2) starts its workers: a new session, so not in the trial's group.
    code = (
        "import subprocess, sys, time\n"
        "worker = 'import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        ' open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(1000)\'\n'
        "subprocess.Popen([sys.executable, '-c', worker, 'worker.pid'], start_new_session=True)\n"
        "while True:\n"
        "    try:\n"
        "        if open('worker.pid').read(): break\n"
        "    except OSError: pass\n"
        "    time.sleep(0.01)\n"
    )
    proc = start(tmp_path, [sys.executable, "-c", code])
    assert proc.wait(30) == 0
    worker = int((tmp_path / "worker.pid").read_text())
    assert wait_until(lambda: not alive(worker)), "a worker in its own session outlived the trial"


def test_leftover_children_die_when_the_leader_exits_by_itself(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = start(tmp_path, [sys.executable, str(SCRIPTS / "group_leader.py"), str(pid_file), "exit"])
    grandchild = read_pid(pid_file)
    assert wait_until(lambda: proc.poll() is not None)
    assert proc.poll() == 0
    assert wait_until(lambda: not alive(grandchild))


def test_kill_is_immediate(tmp_path: Path) -> None:
    code = IGNORES_SIGTERM
    proc = start(tmp_path, [sys.executable, "-c", code])
    assert wait_until(lambda: (tmp_path / "stdout.log").read_text() == "ready\n")
    assert proc.kill() == -signal.SIGKILL


def test_missing_executable_gives_127_and_says_why(tmp_path: Path) -> None:
    proc = start(tmp_path, [str(tmp_path / "no-such-program"), "--flag"])
    assert proc.pid is None
    assert proc.poll() == EXIT_CANNOT_START == 127
    assert proc.terminate(grace=1) == 127
    tail = stderr_tail(tmp_path / "stderr.log")
    assert "no-such-program" in tail and "No such file" in tail


def test_not_executable_gives_127(tmp_path: Path) -> None:
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    proc = start(tmp_path, [str(script)])
    assert proc.wait(5) == 127
    assert "Permission denied" in stderr_tail(tmp_path / "stderr.log")


def test_empty_command_gives_127(tmp_path: Path) -> None:
    assert start(tmp_path, []).poll() == 127
    assert "empty" in stderr_tail(tmp_path / "stderr.log")


def test_stderr_tail_limits_lines_and_bytes(tmp_path: Path) -> None:
    log = tmp_path / "err.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert stderr_tail(log, max_lines=3) == "line 97\nline 98\nline 99"
    tail = stderr_tail(log, max_lines=1000, max_bytes=20)
    # 20 bytes reach into "line 97"; that partial line is dropped.
    assert tail == "line 98\nline 99"
    assert stderr_tail(tmp_path / "missing.log") == ""
    log.write_bytes(b"caf\xe9 broken\n")
    assert stderr_tail(log) == "caf\ufffd broken"


@pytest.mark.parametrize(
    ("code", "text"),
    [(0, "exit code 0"), (3, "exit code 3"), (-9, "killed by SIGKILL (exit code -9)")],
)
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text
