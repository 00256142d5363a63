"""The store conformance suite against a real PostgreSQL (SWEEPER_TEST_POSTGRES_URL).

Locally: ``export SWEEPER_TEST_POSTGRES_URL=$(sudo .ci/start-postgres.sh | tail -n 1)``.
Without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import pytest
from store_conformance import StoreConformance

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    def store_url(self, postgres_store_url: str) -> str:
        return postgres_store_url
