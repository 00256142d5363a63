"""The load benchmark: its in-process run drives whole lifecycles through the coordinator and
store; its delaying proxy (a database on another machine) forwards everything, in order, late."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from delay_proxy import delayed  # noqa: E402
from load import in_process_run, results_stem  # noqa: E402

from sweeper.store import open_store  # noqa: E402
from sweeper.trials import TrialState  # noqa: E402


def test_in_process_lifecycles_each_finish_one_trial_with_its_five_points(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'load.db'}"
    result = in_process_run(url, workers=3, seconds=0.5)
    assert result["errors"] == 0 and result["lifecycles"] > 0
    assert result["calls"] == 7 * result["lifecycles"]  # lease, 5 reports, finish
    with open_store(url) as store:
        (sweep,) = store.list_sweeps()
        trials = store.list_trials(sweep.id, with_history=True)
    assert len(trials) == result["lifecycles"]
    assert all(t.state is TrialState.FINISHED and len(t.history) == 5 for t in trials)


def test_the_delaying_proxy_forwards_both_ways_in_order_each_way_late() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    arrived: list[float] = []

    def shout_back() -> None:  # upper-cases what it gets, until the client stops sending
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(4096):
                arrived.append(time.monotonic())
                connection.sendall(data.upper())

    threading.Thread(target=shout_back, daemon=True).start()
    delay = 0.02
    with delayed("127.0.0.1", listener.getsockname()[1], delay * 1000) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            sent = time.monotonic()
            for word in (b"one ", b"two ", b"three"):
                client.sendall(word)
            client.shutdown(socket.SHUT_WR)  # passed on: the far end sees the stream end
            received = client.recv(4096)
            back = time.monotonic()
            while data := client.recv(4096):
                received += data
    listener.close()
    assert received == b"ONE TWO THREE"
    assert arrived[0] - sent >= delay  # held on the way there
    assert back - arrived[0] >= delay  # and on the way back


def test_the_delaying_proxy_refuses_a_connection_its_target_refuses_and_serves_on() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    target_port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with delayed("127.0.0.1", target_port, 1.0) as port:
        for _ in range(2):  # the proxy is still there for the second
            with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
                assert client.recv(4096) == b""


def test_only_the_reported_runs_write_the_committed_result_files() -> None:
    assert results_stem(64, 10, True, 0.0, True) == "load"
    assert results_stem(64, 10, True, 0.25, False) == "load_remote_db"
    assert results_stem(64, 15, False, 0.0, False) == "load-64agents-15s-sqlite"
    assert results_stem(64, 10, True, 0.0, False) == "load-64agents-10s-postgres"
    assert results_stem(8, 2, True, 0.5, True) == "load-8agents-2s-postgres-delay0.5ms-in-process"
    assert results_stem(64, 10, True, 0.0, False, True) == "load-64agents-10s-postgres-sweeper-only"


def test_the_server_alone_runs_whole_lifecycles_and_no_optuna(tmp_path: Path) -> None:
    out = tmp_path / "alone.json"
    ran = subprocess.run(
        [sys.executable, str(BENCH / "load.py"), "--agents", "2", "--seconds", "1", "--sweeper-only"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ran.returncode == 0, ran.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["database"] == "sqlite" and "optuna" not in row and "throughput_ratio" not in row
    assert row["sweeper"]["errors"] == 0 and row["sweeper"]["lifecycles"] > 0
    assert row["sweeper"]["calls"] == 7 * row["sweeper"]["lifecycles"]
    assert "| sqlite | sweeper |" in ran.stdout and "optuna" not in ran.stdout


def load(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "load.py"), *args], capture_output=True, text=True, timeout=120
    )


def test_a_postgres_server_out_of_reach_is_refused_before_the_sqlite_part_runs(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    out = tmp_path / "load.json"
    url = f"postgresql://bench:secret@127.0.0.1:{port}/db"
    done = load("--postgres", url, "--agents", "1", "--seconds", "0.2", "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert f"--postgres postgresql://bench:***@127.0.0.1:{port}/db: cannot connect:" in done.stderr
    assert "secret" not in done.stderr
    assert done.stdout == "" and not out.exists()  # no row of the SQLite part, no results


def test_counts_that_cannot_run_are_refused() -> None:
    for args, expected in (
        (("--agents", "0"), "--agents must be at least 1, not 0"),
        (("--seconds", "0"), "--seconds must be more than 0, not 0"),
    ):
        refused = load(*args)
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr
