"""A folder the agent puts first on a trial's PYTHONPATH (see :class:`sweeper.agents.hooks.CaptureHook`):
its ``sitecustomize`` arms the metric capture, :mod:`._sweeper_capture`, in the trial's process."""
