"""Reinforcement learning with flaxsurgery: a gymnax DQN and PPO, ID-named environment views.

``dqn`` and ``ppo`` are the two trainers; ``common`` holds what both use (greedy evaluation and
its schedule, the loop of training intervals), ``envs`` the environment views by unit ID,
``defaults`` the DQN settings that solve each environment, ``host`` the DQN on gymnasium.

Needs the `rl` extra (gymnax and what it imports): ``pip install "flaxsurgery[rl]"``.
"""

try:
    import gymnax  # noqa: F401  (checked first: without it the error below says what to install)
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        f"flaxsurgery.rl needs gymnax ({error}): install the `rl` extra, "
        f"pip install \"flaxsurgery[rl]\" (or \".[rl]\" from a clone)", name=error.name) from error

from flaxsurgery.rl.common import evaluate as evaluate
from flaxsurgery.rl.defaults import default_config as default_config
from flaxsurgery.rl.defaults import default_hidden as default_hidden
from flaxsurgery.rl.dqn import ConvQNetwork as ConvQNetwork
from flaxsurgery.rl.dqn import DQNConfig as DQNConfig
from flaxsurgery.rl.dqn import QNetwork as QNetwork
from flaxsurgery.rl.dqn import Trained as Trained
from flaxsurgery.rl.dqn import make_optimizer as make_optimizer
from flaxsurgery.rl.dqn import make_train as make_train
from flaxsurgery.rl.envs import ACTION_IDS as ACTION_IDS
from flaxsurgery.rl.envs import OBS_IDS as OBS_IDS
from flaxsurgery.rl.envs import EnvView as EnvView
from flaxsurgery.rl.ppo import ActorCritic as ActorCritic
from flaxsurgery.rl.ppo import PPOConfig as PPOConfig
from flaxsurgery.rl.ppo import make_train as make_ppo_train

__all__ = [
    "ACTION_IDS",
    "OBS_IDS",
    "ActorCritic",
    "ConvQNetwork",
    "DQNConfig",
    "EnvView",
    "PPOConfig",
    "QNetwork",
    "Trained",
    "default_config",
    "default_hidden",
    "evaluate",
    "make_optimizer",
    "make_ppo_train",
    "make_train",
]
