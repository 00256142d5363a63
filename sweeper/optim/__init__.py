"""The numeric core of model-based search: space encoding, Gaussian processes, acquisition, TPE.

Imports numpy and scipy, and nothing from the store, the web layer or ``sweeper.strategies``, so it
can be tested and benchmarked alone. Strategies import it inside their functions only.
"""

from __future__ import annotations

from sweeper.optim.encoding import Codec, SpaceCodec
from sweeper.optim.gp import GaussianProcess, fit_gp
from sweeper.optim.history import Observations, observations

__all__ = ["Codec", "GaussianProcess", "Observations", "SpaceCodec", "fit_gp", "observations"]
