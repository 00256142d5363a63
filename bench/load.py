"""Load: many agents doing whole trial lifecycles at once: `sweeper server` vs Optuna's RDB storage.

A sweeper lifecycle is what a real agent does over HTTP: lease a trial (``next_trial``), report
5 metric points one call each, finish. An Optuna lifecycle on the same kind of database is
``study.ask()``, ``trial.report()`` x5, ``study.tell()``, with every worker sharing one
``RDBStorage`` (Optuna's way of running distributed workers). Both run in the same process, one
after the other, for the same time, with the same number of worker threads. ``--in-process``
adds the same lifecycles on the coordinator in this process, without HTTP.

    nice python bench/load.py --agents 64 --seconds 15 [--postgres URL [--postgres-delay-ms D]] [--in-process]
        [--sweeper-only]

``--sweeper-only`` runs sweeper's server alone (no Optuna, no ratio): for comparing two versions
of sweeper, alternating, without Optuna's own variation between runs.

``--postgres-delay-ms`` sends both systems' PostgreSQL connections through a proxy that holds
everything D ms each way (bench/delay_proxy.py): a database on another machine; SQLite is not
run again then. CPU per lifecycle is counted over the timed run: the server process, the load
generator, and (``database``) the PostgreSQL server's processes where it runs on this machine.

Writes bench/results/load.json for the reported run (``--agents 64 --seconds 10 --postgres URL
--in-process``), load_remote_db.json for its remote-database run (``--agents 64 --seconds 10
--postgres URL --postgres-delay-ms 0.25``), and a file named by what differs for any other run
(``--out`` names it); prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sweeper.redact import redact_urls

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # server_helpers: a real server subprocess on a free port

SPEC = {
    "method": "random",
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        "depth": {"min": 1, "max": 8},
    },
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def drive(workers: int, seconds: float, lifecycle: Callable[[list[float]], None]) -> dict[str, float]:
    """Run ``lifecycle`` in a loop on ``workers`` threads for ``seconds``; throughput and call latency."""
    latencies: list[list[float]] = [[] for _ in range(workers)]
    counts = [0] * workers
    errors = [0] * workers
    stop = threading.Event()

    def work(i: int) -> None:
        while not stop.is_set():
            try:
                lifecycle(latencies[i])
                counts[i] += 1
            except Exception:
                errors[i] += 1

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    calls = [x for lat in latencies for x in lat]
    return {
        "lifecycles": sum(counts),
        "lifecycles_per_s": sum(counts) / elapsed,
        "errors": sum(errors),
        "calls": len(calls),
        "p50_ms": _percentile(calls, 0.50) * 1000,
        "p99_ms": _percentile(calls, 0.99) * 1000,
        "mean_ms": statistics.fmean(calls) * 1000 if calls else float("nan"),
    }


def _stat(path: Path) -> tuple[str, list[str]] | None:
    """A process's command name and the fields of /proc/PID/stat after it; None once it is gone."""
    try:
        head, rest = path.read_text().rsplit(")", 1)
    except (OSError, ValueError):
        return None
    return head.split("(", 1)[1], rest.split()


def _cpu_ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # user and system time


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None where /proc cannot tell."""
    found = _stat(Path(f"/proc/{pid}/stat"))
    return None if found is None else _cpu_ticks(found[1]) / os.sysconf("SC_CLK_TCK")


def database_cpu_s(url: str) -> float | None:
    """CPU seconds the PostgreSQL servers on this machine have used so far, their ended backends
    included (each server's postmaster collects their time); None for other databases, or where
    /proc shows no PostgreSQL."""
    if not url.startswith("postgresql"):
        return None
    postgres: dict[int, list[str]] = {}  # pid: stat fields, of the processes named postgres
    for path in Path("/proc").glob("[0-9]*/stat"):
        found = _stat(path)
        if found is not None and found[0] == "postgres":
            postgres[int(path.parent.name)] = found[1]
    if not postgres:
        return None
    ticks = 0
    for fields in postgres.values():
        ticks += _cpu_ticks(fields)
        if int(fields[1]) not in postgres:  # a postmaster: and its children's that ended
            ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def with_cpu(result: dict[str, float], seconds: float, busy: dict[str, float | None]) -> dict[str, float]:
    """Add each process's CPU use over the run, in cores and in ms per lifecycle: on a shared
    machine these say what the run cost, and whether the load generator could keep up."""
    for who, cpu_s in busy.items():
        if cpu_s is not None:
            result[f"{who}_cpu_cores"] = cpu_s / seconds
            result[f"{who}_cpu_ms_per_lifecycle"] = cpu_s * 1000 / max(result["lifecycles"], 1)
    return result


def timed(latencies: list[float], call: Callable[[], object]) -> object:
    t0 = time.perf_counter()
    result = call()
    latencies.append(time.perf_counter() - t0)
    return result


def agent_lifecycle(apis: list[Any], sweep_id: str) -> Callable[[list[float]], None]:
    """One agent's trial lifecycle per call; worker thread i calls ``apis[i]``: an HTTP client of
    the server, or the coordinator itself (the same calls)."""
    from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
    from sweeper.trials import MetricPoint, TrialState

    slot = threading.local()
    ids = iter(range(len(apis)))
    lock = threading.Lock()

    def lifecycle(lat: list[float]) -> None:
        if not hasattr(slot, "n"):
            with lock:
                slot.n = next(ids)
        api = apis[slot.n]
        info = AgentInfo(name=f"bench:{slot.n}", host="bench")
        got = timed(lat, lambda: api.next_trial(sweep_id, info))
        if not isinstance(got, Assignment):
            raise RuntimeError(f"no trial: {got}")
        for step in range(5):
            point = MetricPoint("loss", 1.0 / (step + 1), step, step, time.time())
            timed(lat, lambda p=point: api.report_metrics(got.trial_id, got.lease_id, [p]))
        outcome = TrialOutcome(TrialState.FINISHED, exit_code=0)
        timed(lat, lambda: api.finish_trial(got.trial_id, got.lease_id, outcome))

    return lifecycle


def sweeper_run(db_url: str, workdir: Path, workers: int, seconds: float) -> dict[str, float]:
    from server_helpers import start_server

    from sweeper.spec import parse_sweep

    server = start_server(db_url, workdir, extra_args=("--log-level", "warning"))
    try:
        sweep_id = server.client().create_sweep(parse_sweep(SPEC)).id
        lifecycle = agent_lifecycle([server.client() for _ in range(workers)], sweep_id)
        pid = server.process.pid
        server_before, database_before = process_cpu_s(pid), database_cpu_s(db_url)
        client_before = time.process_time()
        result = drive(workers, seconds, lifecycle)
        busy = {
            "server": _spent(server_before, process_cpu_s(pid)),
            "client": time.process_time() - client_before,
            "database": _spent(database_before, database_cpu_s(db_url)),
        }
        return with_cpu(result, seconds, busy)
    finally:
        server.stop()


def in_process_run(db_url: str, workers: int, seconds: float) -> dict[str, float]:
    """The same lifecycles on the coordinator and store in this process, without HTTP: what the
    server's own layers (HTTP, JSON, threads) add."""
    from sweeper.coordinator import Coordinator
    from sweeper.spec import parse_sweep
    from sweeper.store import open_store

    with open_store(db_url) as store:
        coordinator = Coordinator(store)
        sweep_id = coordinator.create_sweep(parse_sweep(SPEC)).id
        before = time.process_time()
        result = drive(workers, seconds, agent_lifecycle([coordinator] * workers, sweep_id))
        return with_cpu(result, seconds, {"process": time.process_time() - before})


def optuna_run(db_url: str, workers: int, seconds: float) -> dict[str, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    study = optuna.create_study(storage=storage, study_name=f"bench-{time.time_ns()}", direction="minimize")

    def lifecycle(lat: list[float]) -> None:
        trial = timed(lat, study.ask)
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_int("depth", 1, 8)
        for step in range(5):
            timed(lat, lambda s=step: trial.report(1.0 / (s + 1), s))
        timed(lat, lambda: study.tell(trial, 0.2))

    before, database_before = time.process_time(), database_cpu_s(db_url)
    result = drive(workers, seconds, lifecycle)
    busy = {
        "client": time.process_time() - before,
        "database": _spent(database_before, database_cpu_s(db_url)),
    }
    return with_cpu(result, seconds, busy)


def fresh_postgres(url: str) -> tuple[str, str, Callable[[], None]]:
    """Two empty databases on the server at ``url`` (one per system), dropped afterwards."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql+psycopg")
    names = [f"bench_{secrets.token_hex(4)}" for _ in range(2)]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    urls = [base.set(database=n).render_as_string(hide_password=False) for n in names]
    return urls[0].replace("+psycopg", ""), urls[1].replace("+psycopg", ""), drop


def round_trip_ms(url: str) -> float:
    """The median time of ``SELECT 1`` on one connection to the database at ``url``."""
    import psycopg

    times = []
    with psycopg.connect(url) as conn:
        for _ in range(300):
            start = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            times.append(time.perf_counter() - start)
    return statistics.median(times[50:]) * 1000


def postgres_fault(url: str) -> str | None:
    """Why no connection to the PostgreSQL server at ``url`` opens, or None: checked before the
    SQLite part runs, not after it."""
    try:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        engine = create_engine(
            make_url(url).set(drivername="postgresql+psycopg"), connect_args={"connect_timeout": 10}
        )
        try:
            with engine.connect():
                return None
        finally:
            engine.dispose()
    except Exception as exc:  # a malformed URL, a missing driver, a refused connection or login
        detail = str(exc).strip().splitlines()
        return redact_urls(f"{type(exc).__name__}: {detail[0] if detail else ''}")


def results_stem(
    agents: int, seconds: float, postgres: bool, delay_ms: float, in_process: bool, sweeper_only: bool = False
) -> str:
    """The results' file name: the reported runs keep ``load`` and ``load_remote_db``; any other
    run is named by what differs, so it never overwrites them."""
    if agents == 64 and seconds == 10 and postgres and not sweeper_only:
        if not delay_ms and in_process:
            return "load"
        if delay_ms == 0.25 and not in_process:
            return "load_remote_db"
    parts = ["load", f"{agents}agents", f"{seconds:g}s", "postgres" if postgres else "sqlite"]
    if delay_ms:
        parts.append(f"delay{delay_ms:g}ms")
    if in_process:
        parts.append("in-process")
    if sweeper_only:
        parts.append("sweeper-only")
    return "-".join(parts)


@contextmanager
def delayed_postgres(url: str, delay_ms: float) -> Iterator[Callable[[str], str]]:
    """A proxy in front of the PostgreSQL server at ``url`` that delays everything ``delay_ms``
    each way, until the block ends; yields what turns a URL of that server into one through it."""
    from delay_proxy import delayed
    from sqlalchemy.engine import make_url

    target = make_url(url)
    with delayed(target.host or "127.0.0.1", target.port or 5432, delay_ms) as port:
        yield lambda u: make_url(u).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL whose user may create databases")
    parser.add_argument(
        "--postgres-delay-ms",
        type=float,
        default=0.0,
        help="delay each way between both systems and PostgreSQL: a round trip takes twice this more",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/, named by the run")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="also run the lifecycles on the coordinator in this process, without HTTP",
    )
    parser.add_argument("--sweeper-only", action="store_true", help="the server alone: no Optuna, no ratio")
    args = parser.parse_args(argv)
    if args.agents < 1:
        parser.error(f"--agents must be at least 1, not {args.agents}")
    if not args.seconds > 0:
        parser.error(f"--seconds must be more than 0, not {args.seconds:g}")
    if args.postgres_delay_ms < 0:
        parser.error(f"--postgres-delay-ms must not be negative, not {args.postgres_delay_ms:g}")
    if args.sweeper_only and args.in_process:
        parser.error("--sweeper-only runs the server alone: leave out --in-process")
    if args.postgres_delay_ms and not args.postgres:
        parser.error("--postgres-delay-ms delays a PostgreSQL server: give one with --postgres URL")
    if args.postgres:
        fault = postgres_fault(args.postgres)
        if fault:
            parser.error(f"--postgres {redact_urls(args.postgres)}: cannot connect: {fault}")
    out = args.out or HERE / "results" / (
        results_stem(
            args.agents,
            args.seconds,
            bool(args.postgres),
            args.postgres_delay_ms,
            args.in_process,
            args.sweeper_only,
        )
        + ".json"
    )

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        backends = []
        if not args.postgres_delay_ms:  # the delay is PostgreSQL's: SQLite's figures would repeat
            backends.append(
                ("sqlite", f"sqlite:///{folder / 'sweeper.db'}", f"sqlite:///{folder / 'optuna.db'}", None)
            )
        if args.postgres:
            backends.append(("postgresql", *fresh_postgres(args.postgres)))
        for name, sweeper_url, optuna_url, cleanup in backends:
            route: AbstractContextManager[Callable[[str], str]] = nullcontext(lambda url: url)
            if name == "postgresql" and args.postgres_delay_ms:
                route = delayed_postgres(args.postgres, args.postgres_delay_ms)
            try:
                with route as via:  # one proxy for both: each connection through it on its own
                    sweeper_url, optuna_url = via(sweeper_url), via(optuna_url)
                    round_trip = round_trip_ms(sweeper_url) if name == "postgresql" else None
                    ours = sweeper_run(sweeper_url, folder / f"server-{name}", args.agents, args.seconds)
                    theirs = None if args.sweeper_only else optuna_run(optuna_url, args.agents, args.seconds)
                    # A new sweep in the server's database, once the server has stopped.
                    inner = (
                        in_process_run(sweeper_url, args.agents, args.seconds) if args.in_process else None
                    )
            finally:
                if cleanup:
                    cleanup()
            row = {
                "database": name,
                "round_trip_ms": round_trip,
                "agents": args.agents,
                "seconds": args.seconds,
                "sweeper": ours,
            }
            if theirs is not None:
                row["optuna"] = theirs
                row["throughput_ratio"] = ours["lifecycles_per_s"] / max(theirs["lifecycles_per_s"], 1e-9)
            if inner is not None:
                row["sweeper_in_process"] = inner
            results.append(row)
            print(json.dumps(row), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(
        "\n| database | system | lifecycles/s | p50 ms | p99 ms | errors | CPU ms/lifecycle | database's |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    for row in results:
        database = row["database"]
        if row["round_trip_ms"] is not None:
            database += f" ({row['round_trip_ms']:.2f} ms round trip)"
        for system in ("sweeper", "optuna", "sweeper_in_process"):
            if system not in row:
                continue
            r = row[system]
            # sweeper: its server plus the load generator; the others: the one process that does both.
            cpu = sum(r.get(f"{who}_cpu_ms_per_lifecycle", 0.0) for who in ("server", "client", "process"))
            database_cpu = r.get("database_cpu_ms_per_lifecycle")
            print(
                f"| {database} | {system} | {r['lifecycles_per_s']:.1f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['errors']} | {cpu:.1f} | "
                f"{'' if database_cpu is None else f'{database_cpu:.1f}'} |"
            )
        if "throughput_ratio" in row:
            print(f"| {database} | ratio sweeper/optuna | {row['throughput_ratio']:.2f}x | | | | | |")


if __name__ == "__main__":
    main()
