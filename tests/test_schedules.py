"""Counters and schedules after surgery: reset= by path, and what the continuing run will do."""

from __future__ import annotations

import doctest
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import flaxsurgery as fs
from tests.conftest import MLP

OBS = (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])
LR = optax.linear_schedule(1e-3, 0.0, transition_steps=10)


def epsilon(step):
    return jnp.maximum(1.0 - step / 100.0, 0.05)


def agent(n_obs, key, steps=0, tx=None):
    """A TrainState with Adam under a decaying learning rate, after `steps` updates."""
    model = MLP((8, 2))
    params = model.init(jax.random.key(key), jnp.zeros((2, n_obs)))["params"]
    tx = tx or optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(lambda c: -LR(c)))
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    for i in range(steps):
        state = state.apply_gradients(grads=jax.tree.map(lambda p, i=i: jnp.sin(p + i), state.params))
    return model, state


def surgery(steps=30, **kwargs):
    model, old = agent(2, 0, steps=steps)
    _, fresh = agent(4, 1)
    return fs.surgery(model, old, model, fresh, jnp.ones((4, 2)), spaces={"obs": OBS}, **kwargs)


def test_an_annealed_learning_rate_at_its_end_is_reported_with_the_reset_that_restarts_it():
    result = surgery(schedules={"learning_rate": LR, "epsilon": (epsilon, "step")})
    lr, eps = result.schedules
    assert lr.counter == "opt_state/1/count" and int(lr.count) == 30
    assert float(lr.value) == float(lr.kept_value) == 0.0 and lr.reset_value == np.float32(1e-3)
    assert lr.ended and lr.restart == ("schedule",)
    assert "reset=('schedule',) restarts it" in str(lr)
    assert eps.counter == "step" and int(eps.count) == 30 and not eps.ended
    np.testing.assert_allclose([eps.value, eps.kept_value, eps.reset_value], [0.7, 0.7, 1.0])
    assert eps.restart == ("step",)


def test_reset_schedule_restarts_the_learning_rate_and_keeps_bias_correction():
    result = surgery(reset=("schedule",), schedules={"learning_rate": LR})
    (lr,) = result.schedules
    assert int(lr.count) == 0 and lr.value == np.float32(1e-3) and not lr.ended
    assert int(result.state.opt_state[0].count) == 30  # Adam's count kept
    assert int(result.state.step) == 30


def test_reset_names_any_counter_by_its_path():
    result = surgery(reset=("step",), schedules={"epsilon": (epsilon, "step")})
    assert int(result.state.step) == 0
    assert int(result.state.opt_state[0].count) == int(result.state.opt_state[1].count) == 30
    (eps,) = result.schedules
    assert float(eps.value) == 1.0 and float(eps.kept_value) == pytest.approx(0.7)
    full = surgery(reset=("opt_state/0/count",))
    assert int(full.state.opt_state[0].count) == 0 and int(full.state.opt_state[1].count) == 30


def test_reset_by_path_on_a_plain_state_dict():
    plan = fs.plan({"w": np.zeros((2, 3), np.float32)}, {"w": np.zeros((3, 3), np.float32)},
                   {"w": ("obs", None)}, spaces={"obs": (["a", "b"], ["a", "b", "c"])})
    old = {"w": jnp.ones((2, 3)), "n_updates": jnp.int32(7), "steps": jnp.int32(700)}
    fresh = {"w": jnp.zeros((3, 3)), "n_updates": jnp.int32(0), "steps": jnp.int32(0)}
    new = fs.transplant_state(old, plan, fresh, reset=("n_updates",))
    assert int(new["n_updates"]) == 0 and int(new["steps"]) == 700


def test_unknown_reset_path_raises_naming_it_and_the_counters():
    with pytest.raises(ValueError, match=r"reset names 'n_updates'.*'step'.*'opt_state/1/count'"):
        surgery(reset=("n_updates",))
    with pytest.raises(ValueError, match=r"reset names 'params/Dense_0/kernel'"):
        surgery(reset=("params/Dense_0/kernel",))  # parameter-shaped: not a counter
    with pytest.raises(ValueError, match=r"reset takes a collection"):
        surgery(reset="schedule")


def test_a_schedule_alone_needs_exactly_one_schedule_counter():
    model, old = agent(2, 0, steps=3, tx=optax.adam(1e-3))  # no schedule counter
    _, fresh = agent(4, 1, tx=optax.adam(1e-3))
    with pytest.raises(ValueError, match=r"has 0 optax schedule counters"):
        fs.surgery(model, old, model, fresh, jnp.ones((4, 2)), spaces={"obs": OBS},
                   schedules={"learning_rate": LR})
    with pytest.raises(ValueError, match=r"counter 'n_updates', which matches 0 leaves"):
        fs.surgery(model, old, model, fresh, jnp.ones((4, 2)), spaces={"obs": OBS},
                   schedules={"epsilon": (epsilon, "n_updates")})


def test_inject_hyperparams_count_is_the_schedule_counter():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=LR)
    model, old = agent(2, 0, steps=12, tx=tx)
    _, fresh = agent(4, 1, tx=tx)
    result = fs.surgery(model, old, model, fresh, jnp.ones((4, 2)), spaces={"obs": OBS},
                        schedules={"learning_rate": LR})
    (lr,) = result.schedules
    assert lr.counter == "opt_state/count" and lr.ended and lr.restart == ("schedule",)


DOCS = Path(__file__).parents[1] / "docs" / "agents.md"


@pytest.mark.parametrize("title", ["### Schedules: what the continuing run will do",
                                   "## Replay buffers"])
def test_docs_agents_sections_run(title):
    """docs/agents.md's examples for schedules and buffers run as written (the page's other
    blocks are sketches, so the page as a whole is not a doctest)."""
    text = DOCS.read_text()
    start = text.index(title)
    section = text[start:text.index("\n## ", start + len(title))]
    test = doctest.DocTestParser().get_doctest(section, {}, title, str(DOCS), 0)
    assert test.examples
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
