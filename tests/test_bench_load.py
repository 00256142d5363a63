"""The load benchmark: its in-process run drives whole lifecycles through the coordinator and
store; its delaying proxy (a database on another machine) forwards everything, in order, late."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from delay_proxy import delayed  # noqa: E402
from load import in_process_run  # noqa: E402

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_delaying_proxy_forwards_both_ways_in_order_each_way_late() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    target_port = listener.getsockname()[1]

    def shout_back() -> None:  # upper-cases what it gets, until the client stops sending
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(4096):
                connection.sendall(data.upper())

    threading.Thread(target=shout_back, daemon=True).start()
    port, delay_ms = _free_port(), 20.0
    with (
        delayed(port, "127.0.0.1", target_port, delay_ms),
        socket.create_connection(("127.0.0.1", port)) as client,
    ):
        started = time.monotonic()
        for word in (b"one ", b"two ", b"three"):
            client.sendall(word)
        client.shutdown(socket.SHUT_WR)  # passed on: the far end sees the stream end
        received = b""
        while data := client.recv(4096):
            received += data
        took = time.monotonic() - started
    listener.close()
    assert received == b"ONE TWO THREE"
    assert took >= 2 * delay_ms / 1000  # held on the way there and on the way back
