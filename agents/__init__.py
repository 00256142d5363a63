"""Agents: lease trials from a coordinator and run them. Installed as ``sweeper.agents``.

Importing this package must stay light: no numpy, SQLAlchemy, web framework, wandb or mlflow.
"""

from sweeper.agents.agent import Agent
from sweeper.agents.command import DEFAULT_COMMAND, expand_command
from sweeper.agents.events import AgentEvent, TrialAbandoned, TrialEnded, TrialStarted
from sweeper.agents.process import TrialProcess
from sweeper.agents.stderr import stderr_tail
from sweeper.agents.trialdir import TrialDir, trial_env

__all__ = [
    "DEFAULT_COMMAND",
    "Agent",
    "AgentEvent",
    "TrialAbandoned",
    "TrialDir",
    "TrialEnded",
    "TrialProcess",
    "TrialStarted",
    "expand_command",
    "stderr_tail",
    "trial_env",
]
