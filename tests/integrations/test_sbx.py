"""SBX (Stable-Baselines-Jax) agents through fs.surgery: load -> surgery -> save -> learn.

The old agents train briefly on CartPole-v1 with two of its four features hidden; the new ones
see all four (DQN also with wider hidden layers; PPO also with a third action, "noop", and
VecNormalize statistics to carry). The recipe functions are shown verbatim in
docs/agents_sbx.md, and a test below keeps the two the same.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
import pytest
from sbx import DQN, PPO
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import flaxsurgery as fs

OBS = (["theta", "theta_dot"], ["x", "x_dot", "theta", "theta_dot"])  # CartPole-v1's features
ACTIONS = (["left", "right"], ["left", "noop", "right"])
CARRIED = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
           "gradient_steps", "target_update_interval", "exploration_fraction", "exploration_final_eps")
DOCS = Path(__file__).parents[2] / "docs" / "agents_sbx.md"


class Observe(gym.ObservationWrapper):
    """CartPole with only the named features."""

    def __init__(self, env: gym.Env, features: list[str]):
        super().__init__(env)
        self.columns = [OBS[1].index(f) for f in features]
        box = env.observation_space
        self.observation_space = gym.spaces.Box(box.low[self.columns], box.high[self.columns],
                                                dtype=np.float32)

    def observation(self, obs):
        return obs[self.columns]


class WithNoop(gym.Wrapper):
    """CartPole with a third action between left and right: no force this step."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.action_space = gym.spaces.Discrete(3)

    def step(self, action):
        cart, action = self.env.unwrapped, int(action)
        if action != 1:
            return self.env.step(action // 2)  # left 0 -> 0, right 2 -> 1
        force, cart.force_mag = cart.force_mag, 0.0
        try:
            return self.env.step(1)
        finally:
            cart.force_mag = force


def old_env() -> gym.Env:
    return Observe(gym.make("CartPole-v1"), OBS[0])


def cartpole_states(n: int = 300, seed: int = 0) -> np.ndarray:
    """Full CartPole observations from random play."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    states = []
    for _ in range(n):
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return np.asarray(states, np.float32)


def old_features(states: np.ndarray) -> np.ndarray:
    return states[:, [OBS[1].index(f) for f in OBS[0]]]


# ----------------------------------------------------------------------------- the recipes


def dqn_recipe(old_path, new_env, samples, model_path):
    old = DQN.load(old_path)
    carried = {name: getattr(old, name) for name in CARRIED}  # the old run's hyperparameters
    new = DQN("MlpPolicy", new_env, policy_kwargs={"net_arch": [64]}, exploration_initial_eps=0.1, **carried)
    moved = fs.surgery(old.policy.qf_state.apply_fn, old.policy.qf_state,
                       new.policy.qf_state.apply_fn, new.policy.qf_state, samples,
                       spaces={"obs": OBS, "Dense_0": (32, 64), "Dense_1": (32, 64)},
                       input_names=["obs"])
    report = moved.verify(samples)
    new.policy.qf_state = moved.state
    new.save(model_path)
    return moved, report


def ppo_recipe(old_path, old_norm, new_env, raw_samples, model_path, norm_path):
    old, new = PPO.load(old_path), PPO("MlpPolicy", new_env, n_steps=256, batch_size=64)
    samples = old_norm.normalize_obs(raw_samples)  # what the old policy sees
    actor = fs.surgery(old.policy.actor_state.apply_fn, old.policy.actor_state,
                       new.policy.actor_state.apply_fn, new.policy.actor_state, samples,
                       spaces={"obs": OBS, "out": ACTIONS}, input_names=["obs"],
                       output=lambda dist: dist.logits, preset="policy",
                       normalizer=old_norm.obs_rms)
    critic = fs.surgery(old.policy.vf_state.apply_fn, old.policy.vf_state,
                        new.policy.vf_state.apply_fn, new.policy.vf_state, samples,
                        spaces={"obs": OBS}, input_names=["obs"])
    report = actor.verify(samples, logits=True)  # a policy's logits: policy_kl too
    new.policy.actor_state, new.policy.vf_state = actor.state, critic.state
    new_env.obs_rms, new_env.ret_rms = actor.normalizer, old_norm.ret_rms
    new.save(model_path)
    new_env.save(norm_path)
    return actor, critic, report


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def states():
    return cartpole_states()


@pytest.fixture(scope="module")
def old_dqn(tmp_path_factory):
    model = DQN("MlpPolicy", old_env(), policy_kwargs={"net_arch": [32]}, learning_starts=200,
                target_update_interval=200, seed=0)
    model.learn(1500)
    path = tmp_path_factory.mktemp("dqn") / "old_dqn.zip"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def old_ppo(tmp_path_factory):
    env = VecNormalize(DummyVecEnv([old_env]))
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=4, seed=0)
    model.learn(1536)
    folder = tmp_path_factory.mktemp("ppo")
    model.save(folder / "old_ppo.zip")
    env.save(folder / "old_vecnormalize.pkl")
    return folder / "old_ppo.zip", folder / "old_vecnormalize.pkl"


def q_values(model, obs, target=False):
    state = model.policy.qf_state
    return np.asarray(state.apply_fn(state.target_params if target else state.params, obs))


def test_sbx_dqn_load_surgery_save_learn(old_dqn, states, tmp_path):
    new_env = gym.make("CartPole-v1")
    moved, report = dqn_recipe(old_dqn, new_env, old_features(states), tmp_path / "new_dqn.zip")
    assert moved.plan.preserves() == "function"
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0

    old, new = DQN.load(old_dqn), DQN.load(tmp_path / "new_dqn.zip", env=new_env)
    assert {name: getattr(new, name) for name in CARRIED} == {name: getattr(old, name) for name in CARRIED}
    assert (new.learning_starts, new.target_update_interval) == (200, 200)  # not SBX's defaults
    for target in (False, True):  # the online and the target network, through SBX's own apply
        np.testing.assert_allclose(q_values(new, states, target), q_values(old, old_features(states), target),
                                   atol=1e-5)
    np.testing.assert_array_equal(new.predict(states, deterministic=True)[0],
                                  old.predict(old_features(states), deterministic=True)[0])
    print(f"SBX DQN: verify {report}; reloaded max |q_new - q_old| "
          f"{np.abs(q_values(new, states) - q_values(old, old_features(states))).max():.3g}")
    old_adam, new_adam = old.policy.qf_state.opt_state[0], new.policy.qf_state.opt_state[0]
    assert int(new_adam.count) == int(old_adam.count) == int(new.policy.qf_state.step) > 0
    new_mu = new_adam.mu["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(new_mu[2:, :32], old_adam.mu["params"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(new_mu[:2], 0.0)  # the new features' moments start at 0

    step = int(new.policy.qf_state.step)
    before = new.policy.qf_state.params
    new.learn(600)  # SBX's own loop: a gradient step every 4 steps after learning_starts=200
    assert int(new.policy.qf_state.step) == step + (600 - 200) // 4
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), before, new.policy.qf_state.params)
    assert all(jax.tree_util.tree_leaves(changed))
    assert np.isfinite(q_values(new, states)).all()


def probs(model, obs):
    state = model.policy.actor_state
    return np.asarray(state.apply_fn(state.params, obs).probs_parameter(), np.float64)


def values(model, obs):
    state = model.policy.vf_state
    return np.asarray(state.apply_fn(state.params, obs))


def test_sbx_ppo_with_vecnormalize_load_surgery_save_learn(old_ppo, states, tmp_path):
    old_path, old_norm_path = old_ppo
    old_norm = VecNormalize.load(old_norm_path, DummyVecEnv([old_env]))
    new_env = VecNormalize(DummyVecEnv([lambda: WithNoop(gym.make("CartPole-v1"))]))
    actor, critic, report = ppo_recipe(old_path, old_norm, new_env, old_features(states),
                                       tmp_path / "new_ppo.zip", tmp_path / "new_vecnormalize.pkl")
    assert actor.plan.preserves() == "policy" and critic.plan.preserves() == "function"
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    assert report.policy_kl <= 1e-6

    # The statistics move along the observation space: new features neutral, float64 kept.
    old_rms, moved = old_norm.obs_rms, actor.normalizer
    np.testing.assert_array_equal(moved.mean, [0.0, 0.0, *old_rms.mean])
    np.testing.assert_array_equal(moved.var, [1.0, 1.0, *old_rms.var])
    assert moved.mean.dtype == moved.var.dtype == np.float64 and moved.count == old_rms.count

    # Reloaded as SBX and SB3 load them, the new agent on raw full observations acts as the old
    # one on raw partial observations: through VecNormalize, the actor and the critic.
    old = PPO.load(old_path)
    new_norm = VecNormalize.load(tmp_path / "new_vecnormalize.pkl",
                                 DummyVecEnv([lambda: WithNoop(gym.make("CartPole-v1"))]))
    new = PPO.load(tmp_path / "new_ppo.zip", env=new_norm)
    x_old, x_new = old_norm.normalize_obs(old_features(states)), new_norm.normalize_obs(states)
    p_old, p_new = probs(old, x_old), probs(new, x_new)
    kept = [ACTIONS[1].index(a) for a in ACTIONS[0]]
    np.testing.assert_allclose(p_new[:, kept], p_old, atol=1e-5)
    kl = np.sum(p_old * (np.log(p_old) - np.log(p_new[:, kept])), axis=-1)
    assert kl.max() <= 1e-6  # the sampled policy is kept: the new action is (almost) never drawn
    print(f"SBX PPO: verify {report}; reloaded through VecNormalize: max |p_new - p_old| "
          f"{np.abs(p_new[:, kept] - p_old).max():.3g}, max KL {kl.max():.3g}, max P(noop) "
          f"{p_new[:, 1].max():.3g}, max |v_new - v_old| "
          f"{np.abs(values(new, x_new) - values(old, x_old)).max():.3g}")
    np.testing.assert_allclose(values(new, x_new), values(old, x_old), atol=1e-5)
    greedy_old = np.asarray(ACTIONS[0])[old.predict(x_old, deterministic=True)[0]]
    greedy_new = np.asarray(ACTIONS[1])[new.predict(x_new, deterministic=True)[0]]
    np.testing.assert_array_equal(greedy_new, greedy_old)
    # The default preset keeps the greedy policy only: its mean rule draws the new action.
    mean_rule = fs.surgery(old.policy.actor_state.apply_fn, old.policy.actor_state,
                           new.policy.actor_state.apply_fn, new.policy.actor_state, x_old,
                           spaces={"obs": OBS, "out": ACTIONS}, input_names=["obs"],
                           output=lambda dist: dist.logits).verify(x_old, logits=True)
    print(f"SBX PPO with preset='preserving': {mean_rule}")
    assert mean_rule.greedy_agreement == 1.0 and mean_rule.policy_kl > 1e-2
    fresh = new_norm.obs_rms
    try:  # and the carried statistics matter: fresh ones change the policy
        new_norm.obs_rms = RunningMeanStd(shape=(4,))
        p_fresh = probs(new, new_norm.normalize_obs(states))
        greedy_fresh = np.asarray(ACTIONS[1])[p_fresh.argmax(-1)]
        print(f"SBX PPO with fresh VecNormalize statistics: max |p - p_old| "
              f"{np.abs(p_fresh[:, kept] - p_old).max():.3g}, greedy agreement "
              f"{np.mean(greedy_fresh == greedy_old):.3f}")
        assert np.abs(p_fresh[:, kept] - p_old).max() > 1e-2
    finally:
        new_norm.obs_rms = fresh

    steps = int(new.policy.actor_state.step)
    count = new_norm.obs_rms.count
    new.learn(512)  # SBX's own loop: two rollouts of 256 steps, 4 x 10 epochs of minibatches
    assert int(new.policy.actor_state.step) == steps + 2 * 10 * 256 // 64
    assert new_norm.obs_rms.count == pytest.approx(count + 1 + 512)  # the reset, then each step
    assert np.isfinite(probs(new, new_norm.normalize_obs(states))).all()


# ----------------------------------------------------------------------------- the docs


def flaxsurgery_statements(function) -> int:
    """The statements of a recipe that call flaxsurgery (fs.* or a Surgery's .verify)."""
    body = ast.parse(inspect.getsource(function)).body[0].body
    return sum("fs." in ast.unparse(s) or ".verify(" in ast.unparse(s) for s in body)


@pytest.mark.parametrize("recipe", [dqn_recipe, ppo_recipe], ids=lambda f: f.__name__)
def test_docs_show_the_tested_recipes_and_their_count(recipe):
    docs = DOCS.read_text()
    assert inspect.getsource(recipe) in docs, f"docs/agents_sbx.md does not show {recipe.__name__} as tested"
    count = flaxsurgery_statements(recipe)
    assert count <= 3
    assert re.search(rf"`{recipe.__name__}`: {count} lines? of flaxsurgery calls", docs)
