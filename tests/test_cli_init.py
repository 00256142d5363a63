"""``sweeper`` as PID 1, as in ``docker run IMAGE sweeper run ...``: a PID namespace of its own
(``unshare``), real trials, real signals.

Each trial counts the zombie processes of its namespace, then leaves a helper in a session of its
own, which the agent kills at the trial's end: a zombie unless something reaps it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from cli_support import SWEEPER
from process_support import wait_until

_NAMESPACE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc"]


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run([*_NAMESPACE, "true"], capture_output=True, timeout=30)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not _namespaces_work(), reason="needs unprivileged PID namespaces (unshare)"
)

_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, time
    import sweeper

    def zombies():
        found = 0
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as fh:
                    found += fh.read().rsplit(")", 1)[1].split()[0] == "Z"
            except (OSError, IndexError):
                pass
        return found

    run = sweeper.init(config={"x": 0, "hold": 0.0})
    run.log({"zombies": zombies()})
    subprocess.Popen(["sleep", "60"], start_new_session=True)  # killed at the trial's end
    time.sleep(run.config.hold)
    run.finish()
    """
)


def _write_sweep(folder: Path, values: list[int], hold: float) -> None:
    (folder / "train.py").write_text(_SCRIPT)
    sweep = {
        "program": "train.py",
        "method": "grid",
        "metric": {"name": "zombies", "goal": "minimize"},
        "parameters": {"x": {"values": values}, "hold": {"value": hold}},
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))


def _as_pid1(folder: Path, *, init: bool) -> subprocess.Popen[str]:
    env = {**os.environ, "SWEEPER_INIT": "1" if init else "0"}
    command = [*_NAMESPACE, SWEEPER, "run", "sweep.yaml", "--agents", "1", "--grace", "5"]
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _trials(folder: Path, run_output: str) -> list[dict]:
    sweep_id = run_output.splitlines()[0].split()[1].rstrip(":")
    listing = subprocess.run(
        [SWEEPER, "trials", sweep_id, "--format", "json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    return sorted(json.loads(listing.stdout), key=lambda t: t["number"])


@pytest.mark.parametrize("init", [True, False], ids=["as-init", "SWEEPER_INIT=0"])
def test_what_trials_leave_behind_is_reaped(tmp_path: Path, init: bool) -> None:
    _write_sweep(tmp_path, [1, 2, 3, 4], hold=0.0)
    command = _as_pid1(tmp_path, init=init)
    out, err = command.communicate(timeout=180)
    assert command.returncode == 0, out + err
    zombies = [t["metrics"]["zombies"] for t in _trials(tmp_path, out)]
    if init:
        assert zombies == [0, 0, 0, 0]
    else:  # the agent is PID 1 and nothing reaps the killed helpers: the case the init is for
        assert zombies[-1] >= 1, zombies


def _namespace_init(unshare_pid: int) -> int:
    """The host's id of the namespace's PID 1: unshare's child."""

    def child() -> int | None:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == unshare_pid:
                            return int(name)
                except (OSError, IndexError, ValueError):
                    continue
        return None

    assert wait_until(lambda: child() is not None, timeout=30), "unshare started no child"
    found = child()
    assert found is not None
    return found


def test_a_stop_sent_to_pid1_reaches_the_command(tmp_path: Path) -> None:
    """``docker stop`` sends SIGTERM to PID 1: the init passes it on, the running trial is stopped
    as by any SIGTERM, and the command's exit code (130) is the container's."""
    _write_sweep(tmp_path, [1, 2], hold=60.0)
    command = _as_pid1(tmp_path, init=True)
    init = _namespace_init(command.pid)
    assert wait_until(lambda: bool(list(tmp_path.rglob("metrics.jsonl"))), timeout=60), "no trial started"
    time.sleep(0.5)
    os.kill(init, signal.SIGTERM)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 130, out + err
    first = _trials(tmp_path, out)[0]
    assert first["state"] == "lost", first  # interrupted, not ended by itself
    assert first["stop_reason"] == "interrupted (SIGTERM)", first
