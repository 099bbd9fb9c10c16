"""The host path: gymnasium environments stepped on the host, the DQN's network and updates jitted."""

import dataclasses
import json

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

import jax

from experiments import dqn as exp
from flaxsurgery.rl import DQNConfig, QNetwork, host
from flaxsurgery.rl.host import HostView

TINY = DQNConfig(
    total_steps=400, num_envs=2, collect_steps=10, gradient_steps=5, learning_starts=100,
    eval_every=200, eval_episodes=2,
)


class Corridor(gym.Env):
    """Walk right from 0 to 3 (terminated); a time limit of 4 truncates walks that dawdle.
    Observation (position, 10 + position): the second feature tells observations apart."""

    observation_space = gym.spaces.Box(-10.0, 20.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)  # 0: stay, 1: right

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action):
        self.position += int(action)
        return self._obs(), 1.0, self.position == 3, False, {}

    def _obs(self):
        return np.array([self.position, 10 + self.position], np.float32)


gym.register(id="TestCorridor-v0", entry_point=Corridor, max_episode_steps=4)
CORRIDOR = {"env_obs_ids": ("pos", "pos10"), "env_action_ids": ("stay", "right")}


def fixed_act(actions):
    """An ``act`` that plays ``actions`` (one per step, the same in every environment)."""
    remaining = iter(actions)

    def act(params, obs, step, keys):
        return np.full(obs.shape[:2], next(remaining)), keys

    return act


def corridor_transitions(actions, obs_ids=None):
    """Play ``actions`` in one Corridor environment through :func:`host.collect`."""
    view = HostView("TestCorridor-v0", obs_ids=obs_ids, **CORRIDOR)
    config = dataclasses.replace(TINY, num_envs=1, collect_steps=len(actions))
    env = view.make_vector(1)
    first, _ = env.reset(seed=[0])
    agents = host.HostAgents(None, None, None, None, jax.random.split(jax.random.key(0), 1))
    _, transitions, obs, step = host.collect(
        config, view, fixed_act(actions), env, agents, view.observe(first)[None], 0
    )
    return jax.tree.map(lambda x: x[0], transitions), obs[0, 0], step


# ---------------------------------------------------------------------------------- autoreset


def test_termination_stores_the_real_final_observation_and_cuts_the_bootstrap():
    t, obs, step = corridor_transitions([1, 1, 1, 1])
    np.testing.assert_array_equal(t.next_obs[:, 0], [1, 2, 3, 1])  # 3: the goal, not a reset
    np.testing.assert_array_equal(t.obs[:, 0], [0, 1, 2, 0])  # then the next episode starts
    np.testing.assert_array_equal(t.terminated, [False, False, True, False])
    assert obs[0] == 1 and step == 4


def test_truncation_keeps_the_bootstrap_and_the_real_final_observation():
    t, _, _ = corridor_transitions([0, 1, 0, 1, 1])  # the limit of 4 ends the walk at 2
    np.testing.assert_array_equal(t.next_obs[:, 0], [0, 1, 1, 2, 1])
    np.testing.assert_array_equal(t.obs[:, 0], [0, 0, 1, 1, 0])
    assert not t.terminated.any()  # truncated is not terminated


def test_collect_shows_the_view_s_features():
    t, _, _ = corridor_transitions([1, 1], obs_ids=("pos10",))
    np.testing.assert_array_equal(t.next_obs, [[11], [12]])


def test_real_next_obs_leaves_running_environments_alone():
    obs = np.array([[5.0], [6.0]])
    info = {"final_obs": np.array([None, np.array([9.0])], object), "_final_obs": [False, True]}
    np.testing.assert_array_equal(host.real_next_obs(obs, info), [[5.0], [9.0]])
    np.testing.assert_array_equal(obs, [[5.0], [6.0]])  # not changed


# ---------------------------------------------------------------------------------- views


def test_lunar_lander_action_ids():
    view = HostView("LunarLander-v3", action_ids=("fire_left", "fire_right"))
    np.testing.assert_array_equal(view.action_index, [1, 3])
    np.testing.assert_array_equal(HostView("LunarLander-v3").action_index, [0, 1, 2, 3])
    assert view.obs_ids == ("x", "y", "vx", "vy", "angle", "angular_velocity", "left_leg",
                            "right_leg")


@pytest.mark.parametrize("action_id, env_action", [("fire_left", 1), ("fire_main", 2), ("fire_right", 3)])
def test_lunar_lander_agent_action_is_the_environment_action(action_id, env_action):
    pytest.importorskip("Box2D")
    view = HostView("LunarLander-v3", action_ids=("noop", action_id))
    mine, theirs = view.make_vector(1), gym.make("LunarLander-v3")
    mine.reset(seed=[7])
    theirs.reset(seed=7)
    for _ in range(5):
        obs, *_ = mine.step(np.array([view.action_index[1]]))
        expected, *_ = theirs.step(env_action)
    np.testing.assert_array_equal(obs[0], expected)


def test_view_lists_every_problem_at_once():
    with pytest.raises(ValueError) as error:
        HostView("CartPole-v1", obs_ids=("x", "x", "phi"), action_ids=("up",))
    message = str(error.value)
    assert "'phi'" in message and "duplicate observation ID 'x'" in message and "'up'" in message
    with pytest.raises(ValueError, match="(?s)pass env_obs_ids=.*pass env_action_ids="):
        HostView("TestCorridor-v0")


def test_view_checks_the_environment_s_spaces():
    view = HostView("TestCorridor-v0", env_obs_ids=("pos",), env_action_ids=("stay", "right"))
    with pytest.raises(ValueError, match="names 1 observation features"):
        view.make()


# ---------------------------------------------------------------------------------- training


def test_host_dqn_learns_cartpole():
    config = DQNConfig(
        total_steps=6_000, num_envs=4, collect_steps=25, gradient_steps=50, learning_starts=500,
        epsilon_steps=3_000, target_period=250, eval_every=2_000, eval_episodes=5,
    )
    calls = []
    view = HostView("CartPole-v1")
    train = host.make_host_train(config, view, QNetwork((32, 32), 2), progress=calls.append)
    out = train(jax.random.split(jax.random.key(0), 2))
    assert out.returns.shape == (2, len(config.eval_steps))
    assert calls == [2_000, 4_000, 6_000]
    mean = np.asarray(out.returns.mean(axis=0))
    assert mean[0] < 50.0 and mean[1:].max() > 100.0, out.returns


def tiny_cartpole_experiment(name: str) -> exp.Experiment:
    """CartPole from two observation features to four, 4 hidden units, on the host path."""
    return exp.Experiment(
        name=name,
        old_view=HostView("CartPole-v1", obs_ids=("theta", "theta_dot")),
        new_view=HostView("CartPole-v1"),
        old_hidden=(4,),
        new_hidden=(4,),
        config=dataclasses.replace(TINY, eval_episodes=1),
        threshold=475.0,
    )


def test_host_experiment_transplants_and_writes_results(tmp_path):
    """The experiment runner with the host trainer; the preserving transplant keeps the greedy
    policy, so it starts with the old agents' last return on the same evaluation episodes."""
    experiment = tiny_cartpole_experiment("tiny_host")
    summary = exp.main(experiment, ["--seeds", "2", "--out", str(tmp_path)],
                       trainer=host.make_host_train)
    assert json.loads((tmp_path / "tiny_host" / "summary.json").read_text())["env"] == "CartPole-v1"
    arms = summary["arms"]
    assert arms["transplant"]["first_return"] == pytest.approx(arms["old"]["final_return"])


# ---------------------------------------------------------------------------------- continuing


def corridor_train(config, agents=2):
    view = HostView("TestCorridor-v0", **CORRIDOR)
    network = QNetwork((8,), view.num_actions)
    return host.make_host_train(config, view, network), network, jax.random.split(
        jax.random.key(1), agents)


def expected_updates(config, start_count=0):
    """Gradient steps of a run whose buffer starts with ``start_count`` transitions: G in every
    iteration after whose collection the buffer holds ``learning_starts``."""
    per_iteration = config.collect_steps * config.num_envs
    counts = start_count + per_iteration * np.arange(1, config.total_steps // per_iteration + 1)
    return config.gradient_steps * int((np.minimum(counts, config.buffer_size)
                                        >= config.learning_starts).sum())


def test_host_train_returns_its_buffer_and_counters():
    train, _, keys = corridor_train(TINY)
    out = train(keys)
    np.testing.assert_array_equal(out.steps, [TINY.total_steps] * 2)
    np.testing.assert_array_equal(out.buffer.count, [TINY.total_steps] * 2)
    np.testing.assert_array_equal(out.updates, [expected_updates(TINY)] * 2)
    held = np.asarray(out.buffer.data.obs)[:, :TINY.total_steps]  # (agents, steps, features)
    np.testing.assert_array_equal(held[..., 1], held[..., 0] + 10)  # Corridor's observations


def test_continued_run_extends_the_ring_and_leaves_the_caller_s_buffer_alone():
    config = dataclasses.replace(TINY, buffer_size=600)
    train, _, keys = corridor_train(config)
    first = train(keys)
    before = jax.tree.map(np.array, first.buffer)
    second = train(keys, first.params, first.target_params, first.opt_state, first.buffer,
                   first.steps, first.updates)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, first.buffer), before)
    np.testing.assert_array_equal(second.buffer.count, [800, 800])
    np.testing.assert_array_equal(second.steps, [800, 800])
    # A plain ring of 600: the second run wrote slots 400..599 and 0..199; 200..399 are kept.
    kept_slots = np.arange(200, 400)
    for field in ("obs", "action", "reward", "next_obs", "terminated"):
        np.testing.assert_array_equal(np.asarray(getattr(second.buffer.data, field))[:, kept_slots],
                                      getattr(before.data, field)[:, kept_slots], err_msg=field)
    # The first run's buffer was full enough to learn from at once.
    np.testing.assert_array_equal(second.updates,
                                  first.updates + expected_updates(config, start_count=400))


def test_continued_run_explores_on_the_kept_step_count():
    """With epsilon 1 -> 0 over the first 100 steps and a learning rate of 0 (the network never
    changes), a run that goes on from step 1,000 acts greedily from its first step, and one from
    step 0 does not: every stored action of the first is the argmax of the unchanged network."""
    config = dataclasses.replace(TINY, learning_rate=0.0, epsilon_start=1.0, epsilon_end=0.0,
                                 epsilon_steps=100, total_steps=200, eval_every=200)
    train, network, keys = corridor_train(config)
    params = train(keys).params
    for init_steps, greedy in ((np.array([1_000, 1_000]), True), (None, False)):
        out = train(keys, params, init_steps=init_steps)
        stored = out.buffer.data
        for agent in range(2):
            obs = np.asarray(stored.obs[agent, :200])
            own = jax.tree.map(lambda x, i=agent: x[i], params)
            best = np.argmax(network.apply(own, obs), axis=-1)
            same = np.array_equal(np.asarray(stored.action[agent, :200]), best)
            assert same == greedy, (init_steps, agent)
        if init_steps is not None:
            np.testing.assert_array_equal(out.steps, init_steps + 200)


def test_host_experiment_runs_the_continue_arms(tmp_path):
    """The continue arm and the control on the host path: the continue arm starts from the
    preserving transplant, so its first evaluation is the old agents' last one."""
    experiment = tiny_cartpole_experiment("tiny_host_continue")
    summary = exp.main(experiment, ["--seeds", "2", "--out", str(tmp_path),
                                    "--arms", "scratch,continue,control"],
                       trainer=host.make_host_train)
    arms = summary["arms"]
    assert set(arms) == {"old", "scratch", "continue", "control"}
    assert arms["continue"]["first_return"] == pytest.approx(arms["old"]["final_return"])
    assert arms["control"]["first_return"] == pytest.approx(arms["old"]["final_return"])
    assert summary["continuation"]["old_steps"] == [TINY.total_steps] * 2
    assert summary["continuation"]["buffer_dropped"] == [0, 0]


def test_experiment_arms_from_another_rule_s_transplant(tmp_path):
    """An experiment's own start (the new action a copy of an old one, a margin below it) and
    its own arm continuing from it: the greedy policy is kept, so the arm starts at the old
    agents' last return, and the plan's claim holds on samples. An arm keeping only the hidden
    layer trains alongside."""
    import flaxsurgery as fs

    experiment = exp.Experiment(
        name="tiny_host_copy",
        old_view=HostView("CartPole-v1", action_ids=("left",)),
        new_view=HostView("CartPole-v1"),
        old_hidden=(4,),
        new_hidden=(4,),
        config=dataclasses.replace(TINY, eval_episodes=1),
        threshold=475.0,
        starts={"copy": {"out": fs.copy_of({"right": "left"}, offset="auto")}},
        arms={"continue_copy": exp.Continuation("copy", buffer=True, counters=True),
              "transplant_features": exp.Continuation("preserving", layers=("Dense_0",))},
    )
    old_net, new_net = experiment.old_network, experiment.new_network
    x = np.random.default_rng(0).standard_normal((1000, 4), np.float32)
    old = old_net.init(jax.random.key(0), x[:1])
    new = fs.transplant(old, exp.make_plan(experiment, "copy"), new_net.init(jax.random.key(1), x[:1]))
    q_old, q_new = old_net.apply(old, x), new_net.apply(new, x)
    np.testing.assert_allclose(q_new[:, 0], q_old[:, 0], atol=1e-6)  # "left" kept
    assert (q_new[:, 1] < q_new[:, 0]).all()  # the copy, a margin below: never greedy
    summary = exp.main(experiment, ["--seeds", "2", "--out", str(tmp_path),
                                    "--arms", "scratch,continue_copy,transplant_features"],
                       trainer=host.make_host_train)
    arms = summary["arms"]
    assert list(arms) == ["old", "scratch", "continue_copy", "transplant_features"]
    assert arms["continue_copy"]["first_return"] == pytest.approx(arms["old"]["final_return"])
    with pytest.raises(ValueError, match="unknown arms"):
        exp.main(experiment, ["--seeds", "2", "--arms", "continue_mean"],
                 trainer=host.make_host_train)
