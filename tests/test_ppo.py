"""The gymnax PPO and its transplants, on tiny budgets (a few hundred steps, two seeds)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxsurgery as fs
from experiments import ppo as pex
from flaxsurgery.rl import EnvView, ppo
from flaxsurgery.rl.ppo import ACTIONS, VALUE, ActorCritic, PPOConfig, make_train

TINY = PPOConfig(total_steps=256, num_envs=2, rollout_steps=32, update_epochs=2,
                 num_minibatches=2, eval_every=128, eval_episodes=2)
SEEDS = 2


def tiny_acrobot(hidden=(16,)) -> pex.PPOExperiment:
    return pex.PPOExperiment(
        name="tiny", old_view=EnvView("Acrobot-v1", action_ids=("torque-1", "torque0")),
        new_view=EnvView("Acrobot-v1"), old_hidden=hidden, new_hidden=hidden, config=TINY,
        threshold=-100.0, arms={},
    )


@pytest.fixture(scope="module")
def old_acrobot():
    """Two seeds of a tiny old Acrobot agent (torques -1 and 0 only), trained 256 steps."""
    experiment = tiny_acrobot()
    train = jax.jit(jax.vmap(make_train(TINY, experiment.old_view, experiment.old_network)))
    return experiment, train(jax.random.split(jax.random.key(0), SEEDS))


# ---------------------------------------------------------------------------------- training


def test_population_shapes_and_seeds_differ(old_acrobot):
    experiment, out = old_acrobot
    assert out.returns.shape == (SEEDS, len(TINY.eval_steps))  # evaluations at 0, 128, 256
    assert out.params["params"]["actor"]["Dense_1"]["kernel"].shape == (SEEDS, 16, 2)
    assert out.params["params"]["critic"]["Dense_1"]["kernel"].shape == (SEEDS, 16, 1)
    assert bool(jnp.all(jnp.isfinite(out.returns)))
    kernels = out.params["params"]["actor"]["Dense_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])  # every seed has its own key
    # Training moved the parameters away from their initialisation.
    key_init = jax.random.split(jax.random.split(jax.random.key(0), SEEDS)[0], 3)[0]  # as train
    init = experiment.old_network.init(key_init, jnp.zeros(experiment.old_view.obs_shape))
    assert not np.allclose(init["params"]["actor"]["Dense_0"]["kernel"], kernels[0])


def test_config_lists_every_problem_at_once():
    with pytest.raises(ValueError) as error:
        PPOConfig(total_steps=1050, num_envs=3, rollout_steps=10, num_minibatches=4, eval_every=100)
    message = str(error.value)
    assert "eval_every=100" in message and "total_steps=1050" in message
    assert "num_minibatches=4" in message


def test_step_size_anneals_over_the_run_from_its_own_count():
    assert float(ppo.step_size(TINY, jnp.int32(0))) == pytest.approx(TINY.learning_rate)
    half = TINY.num_updates // 2
    assert float(ppo.step_size(TINY, jnp.int32(half))) == pytest.approx(TINY.learning_rate / 2)


# ---------------------------------------------------------------------------------- bootstrap


def reference_advantages(reward, value, next_value, terminated, truncated, gamma, lam):
    """Plain-Python GAE, one environment: bootstrap unless terminated, cut at every end."""
    advantage, result = 0.0, []
    for t in reversed(range(len(reward))):
        delta = reward[t] + gamma * (0.0 if terminated[t] else next_value[t]) - value[t]
        advantage = delta + gamma * lam * (0.0 if terminated[t] or truncated[t] else advantage)
        result.append(advantage)
    return result[::-1]


@pytest.mark.parametrize("end", ["terminated", "truncated"])
def test_truncation_bootstraps_and_termination_does_not(end):
    # Three steps of one environment; the episode ends after step 1 (then a new one starts).
    value = [1.0, 2.0, 3.0]
    next_value = [2.0, 10.0, 4.0]  # step 1's: the value of its real final observation
    terminated = [False, end == "terminated", False]
    truncated = [False, end == "truncated", False]
    rollout = ppo.RolloutStep(
        obs=jnp.zeros((3, 1, 1)), action=jnp.zeros((3, 1), jnp.int32), log_prob=jnp.zeros((3, 1)),
        value=jnp.array(value)[:, None], reward=jnp.ones((3, 1)),
        next_value=jnp.array(next_value)[:, None], terminated=jnp.array(terminated)[:, None],
        truncated=jnp.array(truncated)[:, None],
    )
    config = PPOConfig(gamma=0.9, gae_lambda=0.5)
    got = np.asarray(ppo.advantages(config, rollout))[:, 0]
    expected = reference_advantages([1.0] * 3, value, next_value, terminated, truncated, 0.9, 0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Step 1 is its own delta: truncation adds gamma * V(final observation), termination
    # nothing, and the recursion does not reach across the episode end into step 2 (A_2 != 0).
    assert got[2] != 0.0
    assert got[1] == pytest.approx(1.0 + (0.9 * 10.0 if end == "truncated" else 0.0) - 2.0)


def test_rollout_takes_the_value_of_the_real_final_observation_at_truncation():
    view = EnvView("CartPole-v1")
    network = ActorCritic((8,), view.num_actions)
    params = network.init(jax.random.key(0), jnp.zeros(view.obs_shape))
    config = PPOConfig(num_envs=2, rollout_steps=2, eval_every=4, total_steps=4)
    obs, env_state = jax.vmap(view.reset)(jax.random.split(jax.random.key(1), 2))
    # Environment 0 is one step before its time limit: its first step truncates.
    env_state = env_state.replace(time=env_state.time.at[0].set(view.max_steps - 1))
    _, rollout = ppo.make_rollout(config, view, network.apply)(params, env_state, obs,
                                                               jax.random.key(2))
    assert bool(rollout.truncated[0, 0]) and not bool(rollout.terminated[0, 0])
    assert not bool(rollout.truncated[0, 1])
    # After the end, rollout.obs[1, 0] is the next episode's first observation; the value used
    # for step 0 is not its value but the real final observation's.
    reset_value = network.apply(params, rollout.obs[1, 0])[1][0]
    assert abs(float(rollout.next_value[0, 0] - reset_value)) > 1e-6
    # Where no episode ended, the next value is the next step's own value.
    np.testing.assert_allclose(rollout.next_value[0, 1], rollout.value[1, 1], rtol=1e-5)


# ---------------------------------------------------------------------------------- surgery


def head(network, params, output: int):
    """``x -> network output`` number ``output``: 0 the actor's logits, 1 the critic's value."""
    return lambda x: network.apply(params, x)[output]


def test_policy_kl_counts_only_the_old_actions():
    old = jnp.log(jnp.array([[0.25, 0.75]]))
    same = jnp.log(jnp.array([[0.25, 0.75, 1e-12]]))
    half = jnp.log(jnp.array([[0.125, 0.375, 0.5]]))
    index = np.array([0, 1, -1])
    assert float(ppo.policy_kl(old, same, index)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(ppo.policy_kl(old, half, index)[0]) == pytest.approx(np.log(2.0), rel=1e-5)


@pytest.mark.parametrize("offset, kl_bound", [(-20.0, 1e-6), (-1e-3, None)])
def test_acrobot_added_action_keeps_greedy_action_and_with_margin_20_the_policy(
    old_acrobot, offset, kl_bound
):
    experiment, old = old_acrobot
    plan = pex.make_plan(experiment, rules={ACTIONS: fs.mean(offset=offset)})
    new_net = experiment.new_network
    keys = jax.random.split(jax.random.key(5), SEEDS)
    fresh = jax.vmap(lambda k: new_net.init(k, jnp.zeros((6,))))(keys)
    tx = ppo.make_optimizer(TINY)
    params, opt_state = pex.transplant_agents(plan, old, fresh, jax.vmap(tx.init)(fresh))
    assert jax.tree.structure(opt_state) == jax.tree.structure(jax.vmap(tx.init)(fresh))
    samples = jax.vmap(  # full observations = the new view's; the old view drops none here
        lambda p, k: pex.visited_observations(experiment.old_view, experiment.old_network, p, k,
                                              200)
    )(old.params, jax.random.split(jax.random.key(6), SEEDS))

    for seed in range(SEEDS):
        old_p, new_p = jax.tree.map(lambda leaf, i=seed: leaf[i], (old.params, params))
        x = samples[seed]
        check = fs.verify(head(experiment.old_network, old_p, 0), head(new_net, new_p, 0), x,
                          plan, outputs=ACTIONS)
        assert check.greedy_agreement == 1.0 and check.max_abs_diff == 0.0
        value = fs.verify(head(experiment.old_network, old_p, 1), head(new_net, new_p, 1), x,
                          plan, outputs=VALUE)
        assert value.max_abs_diff == 0.0  # the critic is moved whole
        kl = ppo.policy_kl(experiment.old_network.apply(old_p, x)[0], new_net.apply(new_p, x)[0],
                           plan.index(ACTIONS))
        if kl_bound is not None:
            assert float(kl.max()) <= kl_bound
        else:  # a margin of 1e-3 gives the new action about the old ones' mean probability
            assert float(kl.mean()) > 0.1


def test_cartpole_added_observations_keep_actor_and_critic():
    old_view = EnvView("CartPole-v1", obs_ids=("x_dot", "theta"))
    experiment = pex.PPOExperiment(
        name="tiny", old_view=old_view, new_view=EnvView("CartPole-v1"), old_hidden=(8,),
        new_hidden=(8,), config=TINY, threshold=475.0, arms={},
    )
    old_params = experiment.old_network.init(jax.random.key(1), jnp.zeros((2,)))
    fresh = experiment.new_network.init(jax.random.key(2), jnp.zeros((4,)))
    plan = pex.make_plan(experiment, preset="preserving")
    new_params = fs.transplant(old_params, plan, fresh)
    x = np.random.default_rng(0).standard_normal((100, 4), np.float32)  # full observations
    for output, space in ((0, ACTIONS), (1, VALUE)):
        check = fs.verify(head(experiment.old_network, old_params, output),
                          head(experiment.new_network, new_params, output),
                          old_view.observe(x), plan, outputs=space, x_new=x)
        assert check.max_abs_diff < 1e-6


# ---------------------------------------------------------------------------------- statistics


def test_steps_to_threshold_censors_never_reaching_seeds_at_the_budget():
    steps = np.array([0, 100, 200, 300])
    returns = np.array([[0, 5, 10, 10], [0, 0, 0, 4], [10, 0, 0, 0]], float)
    first, reached = pex.steps_to_threshold(steps, returns, threshold=5.0)
    np.testing.assert_array_equal(first, [100, 300, 0])
    np.testing.assert_array_equal(reached, [True, False, True])


# ---------------------------------------------------------------------------------- continuation


def test_step_size_stays_at_zero_past_the_end_of_the_schedule():
    # A continued run's count goes on past num_updates: the step size must not turn negative.
    for updates in (TINY.num_updates, TINY.num_updates + 1, 3 * TINY.num_updates):
        assert float(ppo.step_size(TINY, jnp.int32(updates))) == 0.0


def test_normalizer_statistics_match_numpy_over_every_batch_seen():
    config = PPOConfig(normalize_obs=True)
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (5, 3)).astype(np.float32) for _ in range(4)]
    stats = ppo.fresh_normalizer((3,))
    for batch in batches:
        stats = ppo.update_normalizer(config, stats, jnp.asarray(batch))
    seen = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, seen.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, seen.var(axis=0), rtol=1e-3)
    assert float(stats.count) == pytest.approx(20.0, abs=1e-3)
    standard = np.asarray(ppo.normalize(config, stats, jnp.asarray(seen)))
    np.testing.assert_allclose(standard.mean(axis=0), 0.0, atol=1e-3)
    # Off, the statistics are carried unchanged and the observations pass through.
    off = PPOConfig()
    assert ppo.update_normalizer(off, stats, jnp.asarray(seen)) is stats
    np.testing.assert_array_equal(ppo.normalize(off, stats, jnp.asarray(seen)), seen)


def test_moved_normalizer_keeps_the_networks_function_on_added_observations():
    # CartPole (x_dot, theta) -> (x, x_dot, theta, theta_dot): the preserving plan's zero rows
    # and the moved statistics (a new feature at mean 0, variance 1) give the new agent the old
    # one's logits and value.
    config = PPOConfig(normalize_obs=True)
    old_view = EnvView("CartPole-v1", obs_ids=("x_dot", "theta"))
    experiment = pex.PPOExperiment(
        name="tiny", old_view=old_view, new_view=EnvView("CartPole-v1"), old_hidden=(8,),
        new_hidden=(8,), config=config, threshold=475.0, arms={},
    )
    plan = pex.make_plan(experiment, preset="preserving")
    old_params = experiment.old_network.init(jax.random.key(1), jnp.zeros((2,)))
    new_params = fs.transplant(old_params, plan,
                               experiment.new_network.init(jax.random.key(2), jnp.zeros((4,))))
    x = np.random.default_rng(0).normal(1.0, 3.0, (100, 4)).astype(np.float32)  # full obs
    stats = ppo.update_normalizer(config, ppo.fresh_normalizer((2,)), old_view.observe(x))
    moved = fs.transplant_normalizer(stats, plan, "obs")
    np.testing.assert_array_equal(moved.mean, [0.0, stats.mean[0], stats.mean[1], 0.0])
    np.testing.assert_array_equal(moved.var, [1.0, stats.var[0], stats.var[1], 1.0])
    assert float(moved.count) == float(stats.count)
    for output, space in ((0, ACTIONS), (1, VALUE)):
        check = fs.verify(
            lambda v, o=output: experiment.old_network.apply(old_params, v)[o],
            lambda v, o=output: experiment.new_network.apply(new_params, v)[o],
            ppo.normalize(config, stats, old_view.observe(x)), plan, outputs=space,
            x_new=ppo.normalize(config, moved, x),
        )
        assert check.max_abs_diff < 1e-6


def test_continued_run_keeps_its_count_and_at_the_schedule_end_does_not_move(old_acrobot):
    experiment, old = old_acrobot
    train = jax.jit(jax.vmap(make_train(TINY, experiment.old_view, experiment.old_network)))
    keys = jax.random.split(jax.random.key(3), SEEDS)
    assert np.all(np.asarray(old.updates) == TINY.num_updates)
    kept = train(keys, old.params, old.opt_state, old.normalizer, old.updates)
    np.testing.assert_array_equal(kept.updates, 2 * TINY.num_updates)
    # Step size 0 all phase: the parameters stay exactly where the old run left them.
    for a, b in zip(jax.tree.leaves(kept.params), jax.tree.leaves(old.params)):
        np.testing.assert_array_equal(a, b)
    restarted = train(keys, old.params, old.opt_state, old.normalizer, jnp.zeros_like(old.updates))
    np.testing.assert_array_equal(restarted.updates, TINY.num_updates)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(restarted.params),
                                                    jax.tree.leaves(old.params))]
    assert any(moved)


def test_continue_arms_start_where_the_old_agent_ended_and_restart_does_not():
    config = dataclasses.replace(TINY, normalize_obs=True)
    mean = {"rules": {ACTIONS: fs.mean(offset=-1e-3)}}
    experiment = dataclasses.replace(
        tiny_acrobot(), config=config, control=True, restart="restart",
        arms={"restart": mean, "continue": pex.Continue(mean, keep_schedule=False),
              "kept": pex.Continue(mean, keep_schedule=True)},
    )
    returns, starts, _ = pex.run(experiment, seeds=SEEDS)
    # The greedy action is kept and the moved statistics normalise as the old ones did, so the
    # first evaluation (fixed keys) replays the old agent's last one; the control is the old
    # agent itself.
    for arm in ("continue", "kept", "control"):
        np.testing.assert_array_equal(returns[arm][:, 0], returns["old"][:, -1])
    assert starts["restart"]["start"] == {"kind": "restart", "normalizer": "fresh",
                                          "updates": [0],
                                          "step_size": [pytest.approx(config.learning_rate)]}
    assert starts["continue"]["start"]["normalizer"] == "moved"
    assert starts["continue"]["start"]["updates"] == [0]
    assert starts["kept"]["start"]["updates"] == [config.num_updates]
    assert starts["kept"]["start"]["step_size"] == [0.0]
    assert starts["control"]["start"]["normalizer"] == "its own"
    summary = pex.summarise(experiment, returns, starts, wall_s=0.0)
    assert set(summary["paired_vs_restart"]) == {"continue", "kept", "control"}
    assert set(summary["paired_vs_scratch"]) == {"restart", "continue", "kept", "control"}
    table = pex.restart_table(summary)
    assert table.splitlines()[2].startswith("| restart | fresh | 0 / 0.00025 |")
    assert len(table.splitlines()) == 2 + 4


def test_experiment_names_a_restarted_arm_it_has():
    mean = {"rules": {ACTIONS: fs.mean(offset=-1e-3)}}
    with pytest.raises(ValueError, match="restart='nope' is not one of the arms"):
        dataclasses.replace(tiny_acrobot(), arms={"mean": mean}, restart="nope")
    with pytest.raises(ValueError, match="names a Continue arm"):
        dataclasses.replace(tiny_acrobot(), arms={"c": pex.Continue(mean, True)}, restart="c")
