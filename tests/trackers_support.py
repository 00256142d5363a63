"""Helpers for the tracker tests: a real MLflow server, a trial script, and a sweep run in-process."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sweeper.coordinator import Coordinator
from sweeper.local import LocalAgents
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import Trial, TrialState

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
WANDB = str(Path(sys.executable).with_name("wandb"))

# A script that logs with sweeper, marks a file, and fails or hangs when its config says so.
TRIAL_SCRIPT = """
import pathlib, signal, sys, time
import sweeper
run = sweeper.init({"mode": "ok", "lr": 0.1, "steps": 3})
cfg = run.config
for step in range(cfg.steps):
    run.log({"loss": cfg.lr / (step + 1), "acc": step / 10}, step=step)
out = pathlib.Path(str(run.dir)) / "model.txt"
out.write_text(f"weights for lr={cfg.lr}")
run.log_artifact(out)
print("stdout of trial", cfg.mode, flush=True)
print("stderr of trial", cfg.mode, file=sys.stderr, flush=True)
if cfg.mode == "fail":
    sys.exit(3)
if cfg.mode == "hang":
    (pathlib.Path(str(run.dir)) / "hanging").write_text("1")
    signal.pause()
"""


def sweeper_cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``sweeper ARGS`` in ``cwd``, as a user runs it; any exit status."""
    sweeper = str(Path(sys.executable).with_name("sweeper"))
    return subprocess.run([sweeper, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def trial_script_sweep(folder: Path, parameters: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """``folder/sweep.yaml``: a grid over :data:`TRIAL_SCRIPT` (written as ``folder/train.py``),
    minimizing ``loss``; ``extra`` keys added (an ``integrations`` block). The sweep, as written."""
    program = folder / "train.py"
    program.write_text(TRIAL_SCRIPT)
    sweep = {
        "program": str(program),
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": dict(parameters),
        **extra,
    }
    (folder / "sweep.yaml").write_text(json.dumps(sweep))
    return sweep


def read_run(run_dir: Path) -> dict[str, Any]:
    """What an offline run wrote: its summary view, its run record, and its history rows."""
    summary = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    records = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    out = json.loads(summary.stdout)
    out["history"] = []
    out["run"] = {}  # a run killed before its first flush has no run record
    for line in records.stdout.splitlines():
        record = json.loads(line)
        if record["type"] == "run":
            out["run"] = record["run"]
        elif record["type"] == "history":
            out["history"].append(record["history"]["item"])
        elif record["type"] == "exit":
            out["exit_code"] = record["exit"].get("exit_code", 0)
    return out


def offline_runs(wandb_dir: Path, settle: float = 30.0) -> list[dict[str, Any]]:
    """Every offline run, once each has its run record: wandb's service process may still be
    writing a stopped run's records when its script has already exited."""
    runs = []
    for run_dir in sorted((wandb_dir / "wandb").glob("offline-run-*")):
        deadline = time.monotonic() + settle
        while not _has_run_record(run_dir) and time.monotonic() < deadline:
            time.sleep(0.25)
        runs.append(read_run(run_dir))
    return runs


def _has_run_record(run_dir: Path) -> bool:
    records = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=60
    )
    return any(json.loads(line)["type"] == "run" for line in records.stdout.splitlines() if line.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and a local artifact root; with
    ``admin_password``, MLflow's basic-auth app, whose user ``admin`` has that password."""

    def __init__(self, folder: Path, admin_password: str | None = None) -> None:
        self.folder = folder
        self.admin_password = admin_password
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            MLFLOW,
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--default-artifact-root",
            str(self.folder / "artifacts"),
            "--artifacts-destination",  # what mlflow-artifacts:// URLs reach; by default ./mlartifacts
            str(self.folder / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = dict(os.environ)
        if self.admin_password is not None:
            cmd += ["--app-name", "basic-auth"]
            config = self.folder / "basic_auth.ini"  # its users in this folder; each password hashed once
            config.write_text(
                f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{self.folder / 'auth.db'}\n"
                "admin_username = admin\nauth_cache_ttl_seconds = 600\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.admin_password
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)  # its CSRF protection asks for one
        log = open(self.folder / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not answer within 120s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # as a crash would: no clean shutdown
            self.proc.wait()
        self.proc = None


def run_sweep(
    tmp_path: Path,
    sweep: Mapping[str, Any],
    program: Path,
    *,
    agents: int = 3,
    on_event: Callable[[object], None] | None = None,
    stop_when_hanging: bool = True,
) -> tuple[Coordinator, str, list[Trial]]:
    """Run a sweep with local agents in this process; stop each trial that says it hangs."""
    coordinator = Coordinator(open_store(f"sqlite:///{tmp_path / 'sweeper.db'}"))
    sweep_id = coordinator.create_sweep(parse_sweep(dict(sweep))).id
    done = threading.Event()

    def stopper() -> None:
        stopped: set[int] = set()
        while not done.wait(0.1):
            for trial in coordinator.trials(sweep_id):
                folder = tmp_path / ".sweeper" / "trials" / sweep_id / str(trial.number)
                if trial.id not in stopped and (folder / "hanging").exists() and trial.state.is_active:
                    coordinator.store.request_stop(trial.id, "test: stopped on purpose")
                    stopped.add(trial.id)

    watcher = threading.Thread(target=stopper, daemon=True)
    if stop_when_hanging:
        watcher.start()
    local = LocalAgents(
        coordinator,
        sweep_id,
        agents=agents,
        workdir=tmp_path,
        program_override=str(program),
        grace_period=5.0,
        on_event=on_event,
    )
    local.start()
    local.wait()
    done.set()
    return coordinator, sweep_id, coordinator.trials(sweep_id, with_history=True)


def captured_curve(trial: Trial, steps: int = 6) -> list[tuple[int, float]]:
    """The ``loss`` curve the coordinator got from a script that logs ``lr * (steps - step)`` itself
    (to W&B or MLflow): every step it holds is one the script logged, in order, with its value; all
    of them when the trial finished, a prefix when it was stopped."""
    lr = trial.config["lr"]
    curve = trial.curve("loss")
    assert curve, f"trial {trial.number}: the coordinator got none of the script's metrics"
    assert curve == [(s, lr * (steps - s)) for s in range(len(curve))]
    if trial.state is TrialState.FINISHED:
        assert len(curve) == steps
    else:
        assert trial.state is TrialState.STOPPED and trial.stop_reason, trial
    return curve


def write_grid_sweep(folder: Path, lrs: list[float], integrations: str) -> Path:
    """``folder/sweep.yaml``: a grid over ``lr`` running TRIAL_SCRIPT, logged to ``integrations``
    (the YAML of the block's value, e.g. ``{wandb: {project: p, mode: offline}}``)."""
    program = folder / "train.py"
    program.write_text(TRIAL_SCRIPT)
    path = folder / "sweep.yaml"
    path.write_text(
        f"program: {program}\n"
        "method: grid\n"
        "metric: {name: loss, goal: minimize}\n"
        f"parameters:\n  lr: {{values: {lrs}}}\n"
        f"integrations: {integrations}\n"
    )
    return path


class SlowUplink:
    """A TCP proxy on 127.0.0.1 to ``port`` that passes what clients send at ``rate`` bytes a second
    on each connection, as a slow uplink would, and what the server sends back at full speed."""

    def __init__(self, port: int, rate: float) -> None:
        self.target = port
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, self.rate), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, rate: float | None) -> None:
        try:
            while data := source.recv(16_384):
                sink.sendall(data)
                if rate is not None:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
