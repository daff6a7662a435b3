"""Search strategies: the MnasNet LSTM controller (REINFORCE, PPO) and the random / evolution baselines.

``build(name, num_choices, seed=..., **hyper_parameters)`` returns an object with ``sample(n)``, ``update``,
``state_dict`` and ``load_state_dict`` (see ``controllers.base.Controller``). Controllers see only the number
of choices per decision, never models.
"""

from __future__ import annotations

from controllers.base import Controller, Sample
from controllers.registry import build, get_controller_class, hyperparameters, list_controllers, register_controller

# Importing the implementations registers them.
from controllers import evolution, ppo, random_search, reinforce  # noqa: E402,F401  isort: skip
from controllers.evolution import EvolutionController
from controllers.ppo import PPOController
from controllers.random_search import RandomController
from controllers.reinforce import ReinforceController

__all__ = [
    "Controller",
    "EvolutionController",
    "PPOController",
    "RandomController",
    "ReinforceController",
    "Sample",
    "build",
    "get_controller_class",
    "hyperparameters",
    "list_controllers",
    "register_controller",
]
