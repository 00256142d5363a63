"""An agent machine needs none of the heavy packages: importing what an agent uses leaves them out."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "numpy",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "httpx",
    "wandb",
    "mlflow",
    "torch",
]


def test_agent_imports_stay_light() -> None:
    code = (
        "import json, sys\n"
        "import sweeper.agents, sweeper.client, sweeper.run\n"
        "import sweeper.agents.gpus, sweeper.agents.spool, sweeper.agents.reporting\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_the_check_itself_sees_a_heavy_import() -> None:
    code = f"import json, sys, sqlalchemy; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == ["sqlalchemy"]
