"""A forward pass that cannot run on what the user gave: one clear error naming the cause and
the fix, written as a new user meets it (a model with `train=`, BatchNorm in training mode, a
state of another model, a `spaces` key that names no input)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import flaxsurgery as fs
from tests.conftest import MLP

X = jnp.ones((4, 5))
WRAP = r"lambda v, obs: model.apply\(v, obs, train=False\)"


class DropoutNet(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, obs, train):
        hidden = nn.relu(nn.Dense(self.width)(obs))
        return nn.Dense(3)(nn.Dropout(0.1, deterministic=not train)(hidden))


class BatchNormNet(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, obs, train: bool = True):
        normed = nn.BatchNorm(use_running_average=not train)(obs)
        hidden = nn.relu(nn.Dense(self.width)(normed))
        return nn.Dense(3)(hidden)


def test_a_call_that_needs_train_names_the_argument_and_the_wrap():
    model = DropoutNet()
    variables = model.init(jax.random.key(0), X, False)
    with pytest.raises(ValueError, match=r"(?s)needs an argument.*'train'.*" + WRAP) as caught:
        fs.trace_layout(model.apply, variables, X)
    assert "distribution" not in str(caught.value)
    layout = fs.trace_layout(lambda v, obs: model.apply(v, obs, train=False), variables, X)
    assert layout["params/Dense_0/kernel"] == ("obs", "Dense_0")


def test_batchnorm_in_training_mode_names_the_collection_and_the_wrap():
    model = BatchNormNet()
    variables = model.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"(?s)updates the collection 'batch_stats'.*BatchNorm.*" + WRAP) as caught:
        fs.surgery(model, variables, model, variables, X)
    assert "distribution" not in str(caught.value)


def test_a_spaces_key_that_names_no_input_says_so_after_the_wrap():
    old, new = BatchNormNet(), BatchNormNet(12)
    old_vars = old.init(jax.random.key(0), X)
    new_vars = new.init(jax.random.key(1), jnp.ones((4, 6)))

    def wrap(model):
        return lambda v, obs: model.apply(v, obs, train=False)

    with pytest.raises(ValueError, match=r"^spaces names \['x'\], which the old model does not have "
                                         r"\(its inputs are \['obs'\]\)"):
        fs.surgery(wrap(old), old_vars, wrap(new), new_vars, X, spaces={"x": (5, 6), "Dense_0": (8, 12)})
    result = fs.surgery(wrap(old), old_vars, wrap(new), new_vars, X, spaces={"obs": (5, 6), "Dense_0": (8, 12)})
    assert "overall: preserves function" in result.plan.report()
    assert result.verify(jax.random.normal(jax.random.key(2), (16, 5))).max_abs_diff < 1e-5


def test_an_old_state_of_another_model_names_every_leaf_and_both_shapes():
    old, other = MLP((16, 3)), MLP((24, 3))
    old_vars, other_vars = old.init(jax.random.key(0), X), other.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"^the old state does not fit the old model") as caught:
        fs.surgery(old, other_vars, other, other_vars, X, spaces={"Dense_0": (16, 24)})
    message = str(caught.value)
    assert "leaf 'params/Dense_0/kernel' is (5, 24), the model makes (5, 16)" in message
    assert "leaf 'params/Dense_1/kernel' is (24, 3), the model makes (16, 3)" in message
    # an apply function (no init at hand): flax's words for the first leaf, as leaf and shapes
    with pytest.raises(ValueError, match=r"leaf 'params/Dense_0/kernel' is \(5, 24\), the model makes \(5, 16\)"):
        fs.trace_layout(lambda v, obs: old.apply(v, obs), other_vars, X)
    assert fs.surgery(old, old_vars, other, other_vars, X, spaces={"Dense_0": (16, 24)}).plan


def test_an_output_that_is_not_arrays_still_points_to_output_selection():
    class Wrapped:
        def __init__(self, logits):
            self.logits = logits

    model = MLP((8, 3))
    variables = model.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"returns \['Wrapped'\], not arrays.*output=lambda out: out.logits"):
        fs.trace_layout(lambda v, obs: Wrapped(model.apply(v, obs)), variables, X)
