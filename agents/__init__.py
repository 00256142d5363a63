"""Agents: lease trials from a coordinator and run them. Installed as ``sweeper.agents``.

Importing this package must stay light: no numpy, SQLAlchemy, web framework, wandb or mlflow.
"""
