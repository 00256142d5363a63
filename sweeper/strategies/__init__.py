"""Search strategies, found by method name through a registry.

>>> from sweeper.strategies import strategy_class
>>> strategy_class("grid").method
'grid'
"""

from __future__ import annotations

from sweeper.strategies.base import Strategy, Suggestion, SuggestionKind
from sweeper.strategies.registry import available_methods, register, strategy_class

# Importing the modules registers the built-in strategies.
from sweeper.strategies import grid as _grid  # noqa: E402,F401  isort: skip
from sweeper.strategies import random_search as _random  # noqa: E402,F401  isort: skip
from sweeper.strategies import hyperband as _hyperband  # noqa: E402,F401  isort: skip
from sweeper.strategies import bohb as _bohb  # noqa: E402,F401  isort: skip
from sweeper.strategies import bayes as _bayes  # noqa: E402,F401  isort: skip
from sweeper.strategies import tpe as _tpe  # noqa: E402,F401  isort: skip
from sweeper.strategies import pbt as _pbt  # noqa: E402,F401  isort: skip

__all__ = [
    "Strategy",
    "Suggestion",
    "SuggestionKind",
    "available_methods",
    "register",
    "strategy_class",
]
