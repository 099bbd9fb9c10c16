"""MinAtar: image observations whose channels are units, a CNN Q-network, conv transplants."""

import jax
import jax.numpy as jnp
import numpy as np

import flaxsurgery as fs
from experiments import dqn as exp
from flaxsurgery.rl import ConvQNetwork, DQNConfig, EnvView

TINY = DQNConfig(
    total_steps=200, num_envs=2, collect_steps=10, gradient_steps=2, batch_size=8,
    buffer_size=200, learning_starts=40, eval_every=100, eval_episodes=1,
)
OLD_VIEW = EnvView("Breakout-MinAtar", obs_ids=("paddle", "ball", "brick"))  # no trail
NEW_VIEW = EnvView("Breakout-MinAtar")
EXPERIMENT = exp.Experiment(
    name="tiny_minatar",
    old_view=OLD_VIEW,
    new_view=NEW_VIEW,
    old_hidden=(2, 8),
    new_hidden=(4, 8),
    config=TINY,
    threshold=1.0,
    network=ConvQNetwork,
)


def test_channel_view_picks_channels_by_id_in_its_order():
    view = EnvView("Breakout-MinAtar", obs_ids=("brick", "paddle"))
    key = jax.random.key(2)
    obs, _ = view.reset(key)
    full, _ = NEW_VIEW.reset(key)
    assert view.obs_shape == obs.shape == (10, 10, 2)
    np.testing.assert_array_equal(obs, full[..., jnp.array([3, 0])])
    _, state = view.reset(key)
    step_obs = view.step(jax.random.key(3), state, 0)[0]
    assert step_obs.shape == (10, 10, 2)


def test_cnn_layout_flattens_the_conv_channels_into_the_dense_layer():
    network = ConvQNetwork((4, 8), OLD_VIEW.num_actions)
    sample = jnp.zeros((2, *OLD_VIEW.obs_shape))
    layout = fs.trace_layout(network.apply, network.init(jax.random.key(0), sample), sample)
    assert layout["params/Conv_0/kernel"] == (fs.WINDOW, fs.WINDOW, "obs", "Conv_0")
    assert layout["params/Dense_0/kernel"] == (fs.Flat("Conv_0", 100), "Dense_0")


def test_added_channel_and_wider_conv_keep_the_q_values():
    """Preserving plan: the trail channel's kernel slices and the new filters' outgoing rows
    are zero, so the new network on all channels computes the old one on its channels."""
    plan = exp.make_plan(EXPERIMENT, "preserving")
    old_net, new_net = EXPERIMENT.old_network, EXPERIMENT.new_network
    old = old_net.init(jax.random.key(0), jnp.zeros(OLD_VIEW.obs_shape))
    fresh = new_net.init(jax.random.key(1), jnp.zeros(NEW_VIEW.obs_shape))
    new = jax.jit(fs.transplant)(old, plan, fresh)
    assert new["params"]["Conv_0"]["kernel"].shape == (3, 3, 4, 4)
    images = jax.random.bernoulli(jax.random.key(2), 0.3, (64, *NEW_VIEW.obs_shape)).astype(jnp.float32)
    q_old = old_net.apply(old, images[..., OLD_VIEW.obs_index])
    q_new = new_net.apply(new, images)
    np.testing.assert_allclose(q_new, q_old, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(q_new.argmax(-1), q_old.argmax(-1))


def test_tiny_jitted_minatar_experiment_trains_every_arm():
    returns = exp.run(EXPERIMENT, seeds=2)
    assert set(returns) == set(exp.ARMS)
    assert all(r.shape == (2, len(TINY.eval_steps)) for r in returns.values())
    # The preserving transplant keeps the greedy policy: the same return on the same episodes.
    np.testing.assert_allclose(returns["transplant"][:, 0], returns["old"][:, -1])

