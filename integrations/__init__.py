"""Tracker adapters (MLflow, W&B). Installed as ``sweeper.integrations``."""
