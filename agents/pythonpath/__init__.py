"""A folder the agent puts first on a trial's PYTHONPATH (see :mod:`sweeper.agents.capture`)."""
