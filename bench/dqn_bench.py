"""DQN throughput: our nested-scan design against purejaxrl's, and scaling with seeds."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

from bench.common import record
from experiments.dqn import main
from flaxsurgery.rl.defaults import default_config, default_hidden, scaled
from flaxsurgery.rl.dqn import (
    DQNConfig,
    QNetwork,
    Transition,
    buffer_add,
    buffer_init,
    buffer_sample,
    buffer_size,
    epsilon,
    evaluate,
    make_optimizer,
    make_train,
    td_loss,
)
from flaxsurgery.rl.envs import EnvView

HIDDEN = (16, 16)


def config_for(total_steps: int) -> DQNConfig:
    """The experiments' hyperparameters, with one evaluation at the start and one at the end."""
    return dataclasses.replace(DQNConfig(), total_steps=total_steps, eval_every=total_steps,
                               epsilon_steps=min(DQNConfig().epsilon_steps, total_steps))


def make_train_purejaxrl_design(config: DQNConfig, view: EnvView, network, learn_every: int, updates: int):
    """The same DQN with purejaxrl's structure: one scan step per environment step; every
    `learn_every` scan steps a learning phase of `updates` gradient steps, gated by ``lax.cond``,
    as is the target update. Under ``vmap`` a ``cond`` computes both branches, so the learning
    phase is computed at every scan step and discarded where it is not due.

    Same network, batch, buffer, loss, optimizer and budget as :func:`make_train`; with
    ``learn_every = collect_steps`` and ``updates = gradient_steps`` also the same gradient steps
    per environment step and the same schedule.
    """
    tx = make_optimizer(config)
    apply = network.apply
    eval_keys = jax.random.split(jax.random.key(config.eval_seed), config.eval_episodes)
    loss_and_grad = jax.value_and_grad(lambda p, t, b: td_loss(config, apply, p, t, b))

    def learn(operand):
        params, opt_state, target, buffer, key = operand

        def gradient_step(carry, key):
            params, opt_state = carry
            _, grads = loss_and_grad(params, target, buffer_sample(buffer, key, config.batch_size))
            change, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, change), opt_state), None

        (params, opt_state), _ = jax.lax.scan(gradient_step, (params, opt_state), jax.random.split(key, updates))
        return params, opt_state

    def step(state, _):
        params, target, opt_state, buffer, env_state, obs, steps, done, key = state
        key, key_random, key_explore, key_env, key_learn = jax.random.split(key, 5)
        greedy = jnp.argmax(apply(params, obs), axis=-1)
        random = jax.random.randint(key_random, greedy.shape, 0, view.num_actions)
        explore = jax.random.uniform(key_explore, greedy.shape) < epsilon(config, steps)
        action = jnp.where(explore, random, greedy)
        next_obs, env_state, reward, terminated, _, info = jax.vmap(view.step)(
            jax.random.split(key_env, config.num_envs), env_state, action)
        buffer = buffer_add(buffer, Transition(obs, action, reward, info["final_observation"], terminated))

        due = (buffer_size(buffer) >= config.learning_starts) & ((steps // config.num_envs + 1) % learn_every == 0)
        params, opt_state = jax.lax.cond(due, learn, lambda operand: operand[:2],
                                         (params, opt_state, target, buffer, key_learn))
        new_done = done + due * updates
        sync = new_done // config.target_period > done // config.target_period
        target = jax.lax.cond(sync, lambda: params, lambda: target)
        state = (params, target, opt_state, buffer, env_state, next_obs, steps + config.num_envs, new_done, key)
        return state, None

    def train(key):
        key_init, key_reset, key_run = jax.random.split(key, 3)
        params = network.init(key_init, jnp.zeros(view.obs_shape))
        obs, env_state = jax.vmap(view.reset)(jax.random.split(key_reset, config.num_envs))
        state = (params, params, tx.init(params), buffer_init(config.buffer_size, view.obs_shape),
                 env_state, obs, jnp.int32(0), jnp.int32(0), key_run)
        first = evaluate(view, apply, params, eval_keys)
        state, _ = jax.lax.scan(step, state, None, length=config.total_steps // config.num_envs)
        return jnp.stack([first, evaluate(view, apply, state[0], eval_keys)])

    return train


def steps_per_second(train, seeds: int, total_steps: int) -> float:
    """Environment steps per second of `seeds` seeds (compile excluded)."""
    keys = jax.random.split(jax.random.key(0), seeds)
    compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
    start = time.perf_counter()
    jax.block_until_ready(compiled(keys))
    return seeds * total_steps / (time.perf_counter() - start)


def bench_dqn(quick: bool) -> list[dict]:
    """Ours against purejaxrl's structure with our schedule, and with learning at every step."""
    total_steps = 4_000 if quick else 20_000
    config, view = config_for(total_steps), EnvView("CartPole-v1")
    network = QNetwork(HIDDEN, view.num_actions)
    ours = steps_per_second(lambda k: make_train(config, view, network)(k).returns, 20, total_steps)
    schedule = make_train_purejaxrl_design(config, view, network, config.collect_steps, config.gradient_steps)
    # The same gradient steps per environment step, learning at every scan step: no branch wasted.
    per_step = make_train_purejaxrl_design(config, view, network, 1, config.gradient_steps // config.collect_steps)
    common = {"seeds": 20, "total_steps": total_steps, "env": "CartPole-v1", "hidden": str(HIDDEN)}
    return [
        record("dqn_vs_purejaxrl_design", "throughput", ours, steps_per_second(schedule, 20, total_steps),
               "steps/s", learn_every=config.collect_steps, updates=config.gradient_steps,
               target="none, information only", **common),
        record("dqn_vs_purejaxrl_design_every_step", "throughput", ours, steps_per_second(per_step, 20, total_steps),
               "steps/s", learn_every=1, updates=config.gradient_steps // config.collect_steps, **common),
    ]


def bench_seeds_scaling(quick: bool) -> list[dict]:
    total_steps = 2_000 if quick else 10_000
    config, view = config_for(total_steps), EnvView("CartPole-v1")
    train = lambda k: make_train(config, view, QNetwork(HIDDEN, view.num_actions))(k).returns
    one = steps_per_second(train, 1, total_steps)
    rows = []
    for seeds in (1, 8, 32) if quick else (1, 8, 32, 128):
        rate = one if seeds == 1 else steps_per_second(train, seeds, total_steps)
        rows.append(record("dqn_seeds_scaling", "throughput", rate, one, "steps/s", seeds=seeds,
                           total_steps=total_steps, baseline_is="1 seed"))
    return rows


EXPERIMENTS = ("cartpole_add_observations", "cartpole_add_units", "cartpole_add_layer",
               "acrobot_add_action", "cartpole_swapped_actions")


def load_experiment(name: str):
    """The Experiment defined by ``examples/<name>.py``."""
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXPERIMENT


def bench_experiment_wall(quick: bool) -> list[dict]:
    """Wall time of each whole 20-seed experiment (old phase, transplants, three new arms),
    against training its old phase alone (20 seeds, same budget), compilation included in both."""
    rows = []
    for name in EXPERIMENTS[:1] if quick else EXPERIMENTS:
        experiment = load_experiment(name)
        steps = 2_000 if quick else experiment.config.total_steps
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            main(experiment, ["--seeds", "20", "--steps", str(steps), "--out", out])
            wall = time.perf_counter() - start
        config = experiment.config if steps == experiment.config.total_steps else scaled(
            experiment.config, steps)  # what main(--steps) ran
        train = make_train(config, experiment.old_view, experiment.old_network)
        start = time.perf_counter()
        jax.block_until_ready(jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 20)).returns)
        rows.append(record("experiment_wall", "time", wall, time.perf_counter() - start, "s",
                           experiment=name, seeds=20, steps_per_phase=steps,
                           baseline_is="the old phase alone"))
    return rows


def sb3_config(total_steps: int, learning_starts: int) -> DQNConfig:
    """The CartPole defaults for a throughput run: ``total_steps`` with learning from
    ``learning_starts``, and one greedy episode at the start and the end (SB3 evaluates none)."""
    return dataclasses.replace(
        default_config("CartPole-v1"), total_steps=total_steps, eval_every=total_steps,
        epsilon_steps=total_steps // 2, learning_starts=learning_starts, eval_episodes=1)


def sb3_steps_per_second(config: DQNConfig, hidden: tuple[int, ...]) -> float:
    """Stable-Baselines3's DQN (PyTorch, CPU) on gymnasium's CartPole-v1 with ``config``'s
    settings: the same network, environments, collection and gradient steps, buffer, batch,
    step size, target period, exploration and no clipping. SB3's loss is the Huber loss, ours
    here the squared error; the arithmetic per step is the same. PyTorch runs on one thread."""
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env

    torch.manual_seed(0)
    torch.set_num_threads(1)  # faster than the default for networks this small
    env = make_vec_env("CartPole-v1", n_envs=config.num_envs, seed=0)
    per_iteration = config.num_envs * config.collect_steps
    model = DQN(
        "MlpPolicy", env, learning_rate=config.learning_rate, buffer_size=config.buffer_size,
        learning_starts=config.learning_starts, batch_size=config.batch_size, tau=1.0,
        gamma=config.gamma, train_freq=config.collect_steps, gradient_steps=config.gradient_steps,
        # SB3 counts the target period in environment steps (all environments).
        target_update_interval=config.target_period * per_iteration // config.gradient_steps,
        exploration_fraction=config.epsilon_steps / config.total_steps,
        exploration_initial_eps=config.epsilon_start, exploration_final_eps=config.epsilon_end,
        max_grad_norm=float("inf") if config.max_grad_norm is None else config.max_grad_norm,
        policy_kwargs={"net_arch": list(hidden)}, device="cpu", seed=0, verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=config.total_steps)
    return config.total_steps / (time.perf_counter() - start)


def bench_dqn_vs_sb3(quick: bool) -> list[dict]:
    """Our DQN's environment steps per second against Stable-Baselines3's DQN on the same
    configuration (the CartPole defaults), one seed each, and ours with 20 seeds at once.
    Optional: a row that says so when stable-baselines3 is not installed."""
    total_steps, learning_starts = (12_000, 4_000) if quick else (60_000, 10_000)
    config, hidden = sb3_config(total_steps, learning_starts), default_hidden("CartPole-v1")
    common = {"env": "CartPole-v1", "hidden": str(hidden), "total_steps": total_steps,
              "learning_starts": learning_starts, "baseline_is": "SB3 DQN, 1 seed, CPU"}
    if importlib.util.find_spec("stable_baselines3") is None or importlib.util.find_spec("torch") is None:
        print("dqn_vs_sb3: skipped, stable-baselines3 is not installed "
              "(pip install torch==2.13.0 stable-baselines3)", flush=True)
        return [record("dqn_vs_sb3", "throughput", float("nan"), float("nan"), "steps/s",
                       skipped="stable-baselines3 not installed", **common)]
    view = EnvView("CartPole-v1")
    train = lambda k: make_train(config, view, QNetwork(hidden, view.num_actions))(k).returns
    sb3 = sb3_steps_per_second(config, hidden)
    return [record("dqn_vs_sb3", "throughput", steps_per_second(train, seeds, total_steps), sb3,
                   "steps/s", seeds=seeds, **common) for seeds in (1, 20)]
