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
