"""Loaded by Python at start-up in every trial process the agent starts (the agent puts this folder
on PYTHONPATH). It arms the metric capture, then runs the ``sitecustomize`` this one hides, if any.
Standard library only, and it never raises: a trial must start whatever happens here."""

import importlib.machinery
import importlib.util
import os
import sys


def _arm() -> None:
    try:
        import _sweeper_capture

        _sweeper_capture.install()
    except Exception as exc:  # pragma: no cover - the trial runs without the capture
        print(f"sweeper: metric capture not armed: {exc}", file=sys.stderr)


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # pragma: no cover - as Python itself would, report and go on
        print(f"sweeper: error in the environment's sitecustomize: {exc}", file=sys.stderr)


_arm()
_chain()
