"""Recipes against client libraries: purejaxrl-style PPO (distrax), Brax PPO, rejax PPO.

One `fs.surgery` on each library's agent, then its own training goes on; docs/agents_recipes.md
shows the code between the ``# --- surgery`` and ``# --- end`` markers. These need brax, rejax,
distrax and tfp-nightly (the `integrations` extra), so they run in `make test-integrations`,
not in `make test`; the helpers they share with the recipes that need no client library come
from tests/test_recipes.py.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import rejax
from flax.training import train_state

import flaxsurgery as fs
from flaxsurgery.rl import EnvView
from tests.test_recipes import ACROBOT_ACTIONS, ACROBOT_OBS, FiveValueEnv, acrobot, rollout_obs

# ============================================================================ purejaxrl-style PPO
# purejaxrl is a script repository (purejaxrl/ppo.py), not a package: its structure is written
# here. A flax TrainState over an actor-critic that returns (distrax.Categorical, value), and
# optax.chain(clip_by_global_norm, adam(learning_rate=linearly annealed schedule)).

PPO_CONFIG = {"LR": 2.5e-3, "NUM_ENVS": 4, "NUM_STEPS": 16, "NUM_MINIBATCHES": 2, "UPDATE_EPOCHS": 2,
              "NUM_UPDATES": 3, "MAX_GRAD_NORM": 0.5, "GAMMA": 0.99, "GAE_LAMBDA": 0.95,
              "CLIP_EPS": 0.2, "VF_COEF": 0.5, "ENT_COEF": 0.01}


class ActorCritic(nn.Module):
    """purejaxrl's network shape: an actor tower and a critic tower on the same observation."""

    action_dim: int

    @nn.compact
    def __call__(self, x):
        logits = nn.Dense(self.action_dim)(nn.tanh(nn.Dense(32)(x)))
        value = nn.Dense(1)(nn.tanh(nn.Dense(32)(x)))
        return distrax.Categorical(logits=logits), jnp.squeeze(value, axis=-1)


def annealed_lr(config):
    """The learning rate falls linearly from LR to 0 over NUM_UPDATES updates (optax's count
    counts minibatch steps)."""
    steps_per_update = config["NUM_MINIBATCHES"] * config["UPDATE_EPOCHS"]
    return lambda count: config["LR"] * (1.0 - (count // steps_per_update) / config["NUM_UPDATES"])


def ppo_optimizer(config):
    return optax.chain(optax.clip_by_global_norm(config["MAX_GRAD_NORM"]),
                       optax.adam(learning_rate=annealed_lr(config), eps=1e-5))


def ppo_train_state(network, view, key, config=PPO_CONFIG):
    params = network.init(key, jnp.zeros(view.obs_shape))
    return train_state.TrainState.create(apply_fn=network.apply, params=params, tx=ppo_optimizer(config))


def make_ppo_update(network, view, config=PPO_CONFIG):
    """purejaxrl's update step: collect NUM_STEPS x NUM_ENVS, GAE, then UPDATE_EPOCHS epochs of
    NUM_MINIBATCHES clipped-PPO minibatch steps (`apply_gradients`)."""
    n_envs, n_mb = config["NUM_ENVS"], config["NUM_MINIBATCHES"]

    def env_step(carry, _):
        state, env_state, obs, key = carry
        key, k_act, k_env = jax.random.split(key, 3)
        pi, value = network.apply(state.params, obs)
        action = pi.sample(seed=k_act)
        next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(view.step)(
            jax.random.split(k_env, n_envs), env_state, action)
        done = jnp.logical_or(terminated, truncated)
        return (state, env_state, next_obs, key), (obs, action, pi.log_prob(action), value, reward, done)

    def loss_fn(params, batch):
        obs, action, old_log_prob, old_value, advantage, target = batch
        pi, value = network.apply(params, obs)
        ratio = jnp.exp(pi.log_prob(action) - old_log_prob)
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        clipped = jnp.clip(ratio, 1 - config["CLIP_EPS"], 1 + config["CLIP_EPS"])
        actor_loss = -jnp.minimum(ratio * advantage, clipped * advantage).mean()
        value_clipped = old_value + jnp.clip(value - old_value, -config["CLIP_EPS"], config["CLIP_EPS"])
        value_loss = 0.5 * jnp.maximum((value - target) ** 2, (value_clipped - target) ** 2).mean()
        return actor_loss + config["VF_COEF"] * value_loss - config["ENT_COEF"] * pi.entropy().mean()

    def update_step(runner, _):
        runner, (obs, action, log_prob, value, reward, done) = jax.lax.scan(
            env_step, runner, None, config["NUM_STEPS"])
        state, env_state, last_obs, key = runner
        _, last_value = network.apply(state.params, last_obs)

        def gae(carry, t):
            advantage, next_value = carry
            r, v, d = t
            delta = r + config["GAMMA"] * next_value * (1 - d) - v
            advantage = delta + config["GAMMA"] * config["GAE_LAMBDA"] * (1 - d) * advantage
            return (advantage, v), advantage

        _, advantages = jax.lax.scan(gae, (jnp.zeros_like(last_value), last_value),
                                     (reward, value, done), reverse=True)
        batch = (obs, action, log_prob, value, advantages, advantages + value)
        batch = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)

        def epoch(carry, _):
            state, key = carry
            key, k_perm = jax.random.split(key)
            perm = jax.random.permutation(k_perm, config["NUM_STEPS"] * n_envs)
            minibatches = jax.tree_util.tree_map(
                lambda x: x[perm].reshape((n_mb, -1) + x.shape[1:]), batch)
            state = jax.lax.scan(
                lambda s, mb: (s.apply_gradients(grads=jax.grad(loss_fn)(s.params, mb)), None),
                state, minibatches)[0]
            return (state, key), None

        (state, key), _ = jax.lax.scan(epoch, (state, key), None, config["UPDATE_EPOCHS"])
        return (state, env_state, last_obs, key), None

    def train(state, key, updates):
        """`updates` update steps from `state`, with fresh environments."""
        k_reset, key = jax.random.split(key)
        obs, env_state = jax.vmap(view.reset)(jax.random.split(k_reset, n_envs))
        runner = jax.lax.scan(update_step, (state, env_state, obs, key), None, updates)[0]
        return runner[0]

    return jax.jit(train, static_argnums=2)


def schedule_count(state) -> jnp.ndarray:
    return state.opt_state[1][1].count  # chain(clip, adam = chain(scale_by_adam, schedule))


def adam_count(state) -> jnp.ndarray:
    return state.opt_state[1][0].count


@pytest.fixture(scope="module")
def purejaxrl_agent():
    """A purejaxrl-style PPO agent at the end of its annealed learning rate: its optimizer has
    taken NUM_UPDATES x UPDATE_EPOCHS x NUM_MINIBATCHES steps (here on stand-in gradients)."""
    old_view = acrobot(0)
    network = ActorCritic(old_view.num_actions)
    state = ppo_train_state(network, old_view, jax.random.key(0))
    step = jax.jit(lambda s, i: s.apply_gradients(grads=jax.tree_util.tree_map(lambda p: jnp.cos(3 * p + i), s.params)))
    for i in range(PPO_CONFIG["NUM_UPDATES"] * PPO_CONFIG["UPDATE_EPOCHS"] * PPO_CONFIG["NUM_MINIBATCHES"]):
        state = step(state, i)
    return network, state


def test_purejaxrl_ppo_recipe(purejaxrl_agent):
    old_net, old_state = purejaxrl_agent
    old_view, new_view = acrobot(0), acrobot(1)
    new_net = ActorCritic(new_view.num_actions)
    obs = rollout_obs(old_view)
    # --- surgery (1 flaxsurgery call)
    new = fs.surgery(old_net, old_state, new_net, ppo_train_state(new_net, new_view, jax.random.key(2)), obs,
                     output=lambda out: out[0].logits, input_names=("obs",), preset="policy",
                     spaces={"obs": ACROBOT_OBS, "out": ACROBOT_ACTIONS}, reset=("schedule",))
    # --- end
    report = new.verify(obs, logits=True)
    print("purejaxrl:", report, new.plan.preserves())
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    assert report.policy_kl <= 1e-6
    # distrax normalises the logits (a log-softmax), so the plan cannot claim more than "none"
    # for them; verify measures what it keeps.
    assert new.plan.preserves() == "none" and "mixes this space's units" in new.plan.report()
    values = lambda net, state, x: net.apply(state.params, x)[1]
    np.testing.assert_allclose(values(new_net, new.state, fs.map_units(obs, new.plan, "obs")),
                               values(old_net, old_state, obs), atol=1e-5)
    assert int(adam_count(new.state)) == int(adam_count(old_state)) > 0  # bias correction kept
    assert int(schedule_count(new.state)) == 0  # the new run's annealing starts again
    trained = make_ppo_update(new_net, new_view)(new.state, jax.random.key(3), 1)  # its own loop
    assert int(trained.step) == int(new.state.step) + PPO_CONFIG["NUM_MINIBATCHES"] * PPO_CONFIG["UPDATE_EPOCHS"]
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), trained.params, new.state.params)
    assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_purejaxrl_schedule_count_is_a_choice(purejaxrl_agent):
    """Keeping optax's count continues the old run's annealing, which ended at 0: the first
    updates after surgery do not move the parameters, and later ones have a negative learning
    rate. reset=("schedule",) starts the annealing again and keeps Adam's bias correction."""
    old_net, old_state = purejaxrl_agent
    old_view, new_view = acrobot(0), acrobot(1)
    new_net = ActorCritic(new_view.num_actions)
    fresh = ppo_train_state(new_net, new_view, jax.random.key(2))
    obs = rollout_obs(old_view)
    surgery = functools.partial(fs.surgery, old_net, old_state, new_net, fresh, obs,
                                output=lambda out: out[0].logits, input_names=("obs",), preset="policy",
                                spaces={"obs": ACROBOT_OBS, "out": ACROBOT_ACTIONS})
    kept, reset = surgery().state, surgery(reset=("schedule",)).state
    schedule = annealed_lr(PPO_CONFIG)
    assert float(schedule(schedule_count(kept))) == 0.0
    assert float(schedule(schedule_count(kept) + 2 * PPO_CONFIG["NUM_MINIBATCHES"] * PPO_CONFIG["UPDATE_EPOCHS"])) < 0
    assert schedule(schedule_count(reset)) == np.float32(PPO_CONFIG["LR"])  # the full rate
    assert int(adam_count(reset)) == int(adam_count(kept)) == int(adam_count(old_state))

    # The update the optimizer applies: with the kept count none; with the reset one, Adam's
    # (bias-corrected with the kept count) direction times the full learning rate.
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(3.0 * p) + 0.1, reset.params)
    no_update, _ = kept.tx.update(grads, kept.opt_state, kept.params)
    assert max(float(jnp.abs(u).max()) for u in jax.tree_util.tree_leaves(no_update)) == 0.0
    update, _ = reset.tx.update(grads, reset.opt_state, reset.params)
    clip, adam = optax.clip_by_global_norm(PPO_CONFIG["MAX_GRAD_NORM"]), optax.scale_by_adam(eps=1e-5)
    direction, _ = adam.update(clip.update(grads, clip.init(grads))[0], reset.opt_state[1][0])
    expected = jax.tree_util.tree_map(lambda d: -PPO_CONFIG["LR"] * d, direction)
    for got, want in zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


# ============================================================================ Brax PPO
# brax.training.agents.ppo: networks from make_ppo_networks (an MLP whose output holds the
# tanh-normal's loc and scale parameters, and a value MLP), observation normalisation inside
# their apply(normalizer_params, params, obs), a RunningStatisticsState (UInt64 count, Python
# float std_eps), and ppo.train(..., restore_params=(normalizer, policy, value)) to go on.

FAST_OBS = (("vel",), ("pos", "vel"))
BRAX_TRAIN = {"episode_length": 32, "num_envs": 8, "batch_size": 8, "num_minibatches": 2,
              "unroll_length": 8, "num_updates_per_batch": 1, "normalize_observations": True,
              "num_evals": 1, "run_evals": False}


@pytest.fixture
def brax(monkeypatch):
    """Brax's modules; its ppo.train (0.14.2) calls jax.device_put_replicated, which jax 0.10
    removed: here the same, for the one-device case."""
    from brax.envs.fast import Fast
    from brax.training.acme import running_statistics
    from brax.training.agents.ppo import networks, train

    def replicated(tree, devices):
        stacked = jax.tree_util.tree_map(lambda a: jnp.stack([jnp.asarray(a)] * len(devices)), tree)
        return jax.device_put(stacked, devices[0])

    try:
        jax.device_put_replicated  # noqa: B018
    except AttributeError:
        monkeypatch.setattr(jax, "device_put_replicated", replicated, raising=False)

    class FastView(Fast):
        """Brax's test environment ("go fast": position, velocity), showing some features."""

        def __init__(self, features):
            super().__init__()
            self.index = np.array([FAST_OBS[1].index(f) for f in features])

        def reset(self, rng):
            state = super().reset(rng)
            return state.replace(obs=state.obs[self.index])

        def step(self, state, action):
            state = super().step(state, action)
            return state.replace(obs=state.obs[self.index])

    factory = functools.partial(networks.make_ppo_networks, policy_hidden_layer_sizes=(16,),
                                value_hidden_layer_sizes=(16,))
    return dataclasses.make_dataclass("Brax", ["FastView", "rs", "networks", "train"])(
        FastView, running_statistics, factory, train)


def gaussian_kl(loc_p, scale_p, loc_q, scale_q):
    return (jnp.log(scale_q / scale_p) + (scale_p ** 2 + (loc_p - loc_q) ** 2) / (2 * scale_q ** 2) - 0.5).sum(-1)


def test_brax_ppo_recipe(brax):
    rs = brax.rs  # brax.training.acme.running_statistics
    old_net = brax.networks(len(FAST_OBS[0]), 1, preprocess_observations_fn=rs.normalize)
    new_net = brax.networks(len(FAST_OBS[1]), 1, preprocess_observations_fn=rs.normalize)
    # The trained agent's parameters (normalizer, policy, value), as ppo.train returns them and
    # brax.io.model.load_params loads them; here: Brax's init, and statistics of observations.
    key = jax.random.key(0)
    obs = jax.random.normal(key, (64, 1)) * 2.0 + 1.5
    old_stats = rs.update(rs.init_state(jnp.zeros(1)), obs)
    old_policy, old_value = old_net.policy_network.init(key), old_net.value_network.init(key)

    identity = rs.NestedMeanStd(mean=0.0, std=1.0)

    def brax_apply(networks):  # Brax's networks on normalised observations
        return lambda p, obs: (networks.policy_network.apply(identity, p["policy"], obs),
                               networks.value_network.apply(identity, p["value"], obs))

    fresh = {"policy": new_net.policy_network.init(key), "value": new_net.value_network.init(key)}
    # --- surgery (1 flaxsurgery call)
    new = fs.surgery(brax_apply(old_net), {"policy": old_policy, "value": old_value}, brax_apply(new_net), fresh,
                     rs.normalize(obs, old_stats), spaces={"obs": FAST_OBS}, normalizer=old_stats)
    stats = new.normalizer
    # --- end
    assert new.plan.preserves() == "function"
    np.testing.assert_array_equal(stats.mean, [0.0, float(old_stats.mean[0])])
    np.testing.assert_array_equal(stats.std, [1.0, float(old_stats.std[0])])
    np.testing.assert_allclose(stats.summed_variance, [64.0, float(old_stats.summed_variance[0])])  # var 1
    assert int(stats.count) == int(old_stats.count) == 64 and stats.std_eps == old_stats.std_eps

    # The whole agent, as Brax runs it (normalisation inside), on each environment's observations.
    new_obs = fs.map_units(obs, new.plan, "obs").at[:, 0].set(3.0)  # the new feature: any value
    old_logits = old_net.policy_network.apply(old_stats, old_policy, obs)
    new_logits = new_net.policy_network.apply(stats, new.state["policy"], new_obs)
    report = fs.verify(lambda _: old_logits, lambda _: new_logits, obs, new.plan, outputs="out/0")
    old_dist = old_net.parametric_action_distribution.create_dist(old_logits)
    new_dist = new_net.parametric_action_distribution.create_dist(new_logits)
    kl = float(gaussian_kl(old_dist.loc, old_dist.scale, new_dist.loc, new_dist.scale).max())
    print("brax:", report, "gaussian KL", kl, new.plan.preserves())
    assert report.max_abs_diff <= 1e-5 and kl <= 1e-6
    old_v = old_net.value_network.apply(old_stats, old_value, obs)
    np.testing.assert_allclose(new_net.value_network.apply(stats, new.state["value"], new_obs), old_v, atol=1e-5)

    # Brax's own loop goes on from the new parameters and statistics.
    _, (stats2, policy2, _), _ = brax.train.train(
        brax.FastView(FAST_OBS[1]), num_timesteps=512, seed=1, network_factory=brax.networks,
        restore_params=(stats, new.state["policy"], new.state["value"]), **BRAX_TRAIN)
    assert int(stats2.count) > int(stats.count)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), policy2, new.state["policy"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_brax_running_statistics_move_as_they_are(brax):
    plan = fs.plan({"w": np.ones((1, 3), np.float32)}, {"w": np.ones((2, 3), np.float32)},
                   {"w": ("obs", None)}, spaces={"obs": FAST_OBS})
    stats = brax.rs.update(brax.rs.init_state(jnp.zeros(1)), jnp.array([[1.0], [3.0]]))
    moved = fs.transplant_normalizer(stats, plan, "obs")  # the UInt64 count read as a number
    assert type(moved.count) is type(stats.count) and int(moved.count) == 2
    np.testing.assert_allclose(moved.summed_variance, [2.0, float(stats.summed_variance[0])])
    ema = fs.transplant_normalizer(stats, plan, "obs", neutral={"summed_variance": 1.0})  # EMA mode
    np.testing.assert_allclose(ema.summed_variance, [1.0, float(stats.summed_variance[0])])


# ============================================================================ rejax PPO
# rejax.PPO: an Algorithm (a flax struct) whose train state holds actor_ts and critic_ts (flax
# TrainStates over a DiscretePolicy that builds a distrax.Categorical, and a VNetwork) and
# obs_rms_state (mean, var, count), and whose train(train_state=...) goes on from a state.


def rejax_ppo(view: EnvView, timesteps: int) -> Any:
    algo = rejax.PPO.create(env=FiveValueEnv(view), num_envs=4, num_steps=16, num_minibatches=2,
                            num_epochs=1, total_timesteps=timesteps, eval_freq=timesteps,
                            normalize_observations=True, skip_initial_evaluation=True,
                            agent_kwargs={"hidden_layer_sizes": (16,)})
    return algo.replace(eval_callback=lambda algo, ts, rng: ())  # no evaluation episodes in a test


def rejax_logits(algo):
    """The actor's logits before rejax builds its distrax.Categorical (which normalises them)."""
    return lambda v, obs: algo.actor.apply(v, obs, method=lambda m, x: m.action_logits(m.features(x)))


def test_rejax_ppo_recipe():
    old_algo, new_algo = rejax_ppo(acrobot(0), 64), rejax_ppo(acrobot(1), 64)
    obs = rollout_obs(acrobot(0))
    # The trained agent (here: rejax's init, and its observation statistics updated by rejax).
    old = old_algo.init_state(jax.random.key(0))
    old = old.replace(obs_rms_state=old_algo.update_obs_rms(old.obs_rms_state, obs))
    fresh = new_algo.init_state(jax.random.key(1))
    x = old_algo.normalize_obs(old.obs_rms_state, obs)  # what the networks see
    # --- surgery (2 flaxsurgery calls)
    actor = fs.surgery(rejax_logits(old_algo), old.actor_ts, rejax_logits(new_algo), fresh.actor_ts, x,
                       input_names=("obs",), spaces={"obs": ACROBOT_OBS, "out": ACROBOT_ACTIONS},
                       preset="policy", normalizer=old.obs_rms_state)
    critic = fs.surgery(old_algo.critic, old.critic_ts, new_algo.critic, fresh.critic_ts, x,
                        spaces={"obs": ACROBOT_OBS})
    new = fresh.replace(actor_ts=actor.state, critic_ts=critic.state, obs_rms_state=actor.normalizer)
    # --- end
    report = actor.verify(x, logits=True)
    print("rejax:", report, actor.plan.preserves(), critic.plan.preserves())
    assert actor.plan.preserves() == "policy" and critic.plan.preserves() == "function"
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0 and report.policy_kl <= 1e-6
    stats = new.obs_rms_state
    np.testing.assert_array_equal(stats.mean, jnp.concatenate([old.obs_rms_state.mean, jnp.zeros(2)]))
    np.testing.assert_array_equal(stats.var, jnp.concatenate([old.obs_rms_state.var, jnp.ones(2)]))
    assert float(stats.count) == float(old.obs_rms_state.count) > 64

    # The whole agent as rejax runs it: normalise, then the actor's distribution, on each env's
    # observations (the new features at any value).
    new_obs = fs.map_units(obs, actor.plan, "obs").at[:, 4:].set(jax.random.normal(jax.random.key(2), (64, 2)))
    old_probs = old_algo.actor.apply(old.actor_ts.params, old_algo.normalize_obs(old.obs_rms_state, obs),
                                     method="_action_dist").probs
    new_probs = new_algo.actor.apply(new.actor_ts.params, new_algo.normalize_obs(stats, new_obs),
                                     method="_action_dist").probs
    np.testing.assert_allclose(new_probs[:, ::2], old_probs, atol=1e-6)
    assert float(new_probs[:, 1].max()) < 1e-6  # the new action is not sampled
    old_v = old_algo.critic.apply(old.critic_ts.params, old_algo.normalize_obs(old.obs_rms_state, obs))
    new_v = new_algo.critic.apply(new.critic_ts.params, new_algo.normalize_obs(stats, new_obs))
    np.testing.assert_allclose(new_v, old_v, atol=1e-5)

    trained, _ = jax.jit(new_algo.train)(train_state=new)  # rejax's own loop goes on
    assert int(trained.global_step) == int(new.global_step) + 64
    assert float(trained.obs_rms_state.count) > float(stats.count)
