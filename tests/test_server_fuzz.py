"""Property-based requests generated from the live server's OpenAPI description.

No request, however odd, may get a 5xx or a response outside the description, and afterwards
the store must still be consistent. Bounded: a fixed seed and a few examples per operation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from server_helpers import TOKEN, ServerProcess, serving
from sqlalchemy import create_engine, text

from sweeper.protocol import AgentInfo, Assignment
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import MetricPoint, TrialState

EXAMPLES = int(os.environ.get("SWEEPER_FUZZ_EXAMPLES", "25"))  # per operation; raise it for a deeper run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("fuzz")
    with serving(f"sqlite:///{folder / 's.db'}", folder, extra_args=["--max-batch", "50"]) as running:
        # Real sweeps and trials, so generated ids sometimes name something that exists.
        client = running.client()
        for method in ("grid", "random"):
            sweep = client.create_sweep(
                parse_sweep({"method": method, "parameters": {"x": {"values": [1, 2]}}})
            )
            answer = client.next_trial(sweep.id, AgentInfo("seed-agent", "box"))
            assert isinstance(answer, Assignment)
            client.report_metrics(answer.trial_id, answer.lease_id, [MetricPoint("m", 0.5, 1, 1, 1.0)])
        yield running


def test_no_request_breaks_the_server(server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # every route is described
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,  # a fixed seed: the same requests every run
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def exchange(case: schemathesis.Case) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=checks, headers=headers)

        exchange()


def test_the_store_is_consistent_afterwards(server: ServerProcess) -> None:
    with open_store(server.db_url) as store:
        sweeps = store.list_sweeps()
        assert len(sweeps) >= 2
        for sweep in sweeps:
            trials = store.list_trials(sweep.id, with_history=True)  # every state parses as a TrialState
            assert [t.number for t in trials] == list(range(1, len(trials) + 1))
            assert all(isinstance(t.state, TrialState) for t in trials)
            assert all(t.ended_at is not None for t in trials if t.state.is_terminal)
            for trial in trials:
                assert set(trial.summary) <= {p.name for p in trial.history or ()}
    engine = create_engine(server.db_url)
    try:
        with engine.connect() as conn:
            orphans = conn.execute(
                text("SELECT COUNT(*) FROM metrics WHERE trial_id NOT IN (SELECT id FROM trials)")
            ).scalar_one()
    finally:
        engine.dispose()
    assert orphans == 0
