"""Claims that follow the activation and the scale.

An identity layer keeps the function only where the activation after it keeps the values before
it; a new action's margin must beat the rounding of the outputs at their magnitude and dtype.
Each section reproduces a report that used to claim more than held, then a property test checks,
with ``fs.verify``, every claim a report makes over activations, inserted and removed layers,
output scales and float dtypes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flaxsurgery as fs
from flaxsurgery.activations import KNOWN, classify, keeps_identity
from tests.conftest import examples

ACTS = {
    "relu": nn.relu, "relu6": jax.nn.relu6, "hard_tanh": jax.nn.hard_tanh, "tanh": nn.tanh,
    "sigmoid": nn.sigmoid, "gelu": nn.gelu, "silu": nn.silu, "leaky_relu": nn.leaky_relu,
    "elu": nn.elu, "linear": lambda x: x,
}


class ActNet(nn.Module):
    """An MLP of `depth` hidden layers, each followed by `act`; `scale` multiplies the outputs'
    layer (kernel and bias), as a trained network's large Q-values would."""

    act: str = "relu"
    depth: int = 2
    hidden: int = 8
    actions: int = 2
    dtype: str = "float32"

    @nn.compact
    def __call__(self, obs):
        x = obs.astype(self.dtype)
        for _ in range(self.depth):
            x = ACTS[self.act](nn.Dense(self.hidden, param_dtype=self.dtype, dtype=self.dtype)(x))
        return nn.Dense(self.actions, param_dtype=self.dtype, dtype=self.dtype)(x)


def init(model, n_obs=3, key=0):
    return model.init(jax.random.key(key), jnp.zeros((4, n_obs)))


def deeper(act, old_depth=2, new_depth=3, **kw):
    """Surgery from an MLP of `old_depth` hidden layers to `new_depth`, the new layers last."""
    old_m, new_m = ActNet(act, old_depth, **kw), ActNet(act, new_depth, **kw)
    old, fresh = init(old_m), init(new_m, key=1)
    layer_map = {f"Dense_{new_depth}": f"Dense_{old_depth}"}
    layer_map |= {f"Dense_{i}": None for i in range(old_depth, new_depth)}
    x = jax.random.normal(jax.random.key(5), (512, 3)) * 3.0
    return fs.surgery(old_m, old, new_m, fresh, x[:4], layer_map=layer_map), x


# ----------------------------------------------------------------- 1. identity layers and activations


@pytest.mark.parametrize("act", ["relu", "relu6", "hard_tanh", "linear"])
def test_an_identity_layer_before_an_idempotent_activation_keeps_the_function(act):
    result, x = deeper(act)
    assert result.plan.preserves() == "function", result.plan.report()
    report = result.verify(x)
    assert report.max_rel_diff <= fs.ROUNDING["float32"], report
    assert report.greedy_agreement == 1.0


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "gelu", "silu", "leaky_relu", "elu"])
def test_an_identity_layer_before_another_activation_claims_nothing_and_says_why(act):
    result, x = deeper(act)
    plan = result.plan
    assert plan.preserves() == "none", plan.report()
    assert f"{act} follows it" in plan.report(), plan.report()
    assert result.verify(x).max_abs_diff > 1e-3  # and indeed the function changed


def test_an_identity_layer_where_no_activation_follows_keeps_the_function():
    class Linear(nn.Module):  # the inserted layer has no activation after it
        extra: bool = False

        @nn.compact
        def __call__(self, obs):
            x = nn.tanh(nn.Dense(8)(obs))
            if self.extra:
                x = nn.Dense(8)(x)
            return nn.Dense(2)(x)

    old_m, new_m = Linear(), Linear(extra=True)
    old, fresh = init(old_m), init(new_m, key=1)
    result = fs.surgery(old_m, old, new_m, fresh, jnp.ones((4, 3)),
                        layer_map={"Dense_2": "Dense_1", "Dense_1": None})
    assert result.plan.preserves() == "function", result.plan.report()
    assert "no activation follows it" in result.plan.report()
    x = jax.random.normal(jax.random.key(5), (256, 3))
    assert result.verify(x).max_rel_diff <= fs.ROUNDING["float32"]


def test_an_activation_the_tracer_cannot_name_claims_nothing_and_says_how():
    class Odd(nn.Module):
        depth: int = 1

        @nn.compact
        def __call__(self, obs):
            x = obs
            for _ in range(self.depth):
                x = jnp.sin(nn.Dense(8)(x))
            return nn.Dense(2)(x)

    old_m, new_m = Odd(1), Odd(2)
    old, fresh = init(old_m), init(new_m, key=1)
    result = fs.surgery(old_m, old, new_m, fresh, jnp.ones((4, 3)),
                        layer_map={"Dense_2": "Dense_1", "Dense_1": None})
    assert result.plan.preserves() == "none"
    assert "fs.ACTIVATIONS" in result.plan.report()


def test_a_layout_without_activations_claims_nothing_until_told():
    old_m, new_m = ActNet("relu", 1), ActNet("relu", 2)
    old, fresh = init(old_m), init(new_m, key=1)
    x = jnp.ones((4, 3))
    layout, new_layout = fs.trace_layout(old_m.apply, old, x), fs.trace_layout(new_m.apply, fresh, x)
    assert new_layout[fs.ACTIVATIONS] == {"Dense_0": "relu", "Dense_1": "relu", "out": "linear"}
    told = new_layout.pop(fs.ACTIVATIONS)  # as a hand-written layout would be
    layer_map = {"Dense_2": "Dense_1", "Dense_1": None}
    plan = fs.plan(old, fresh, layout, new_layout=new_layout, layer_map=layer_map)
    assert plan.preserves() == "none" and "fs.ACTIVATIONS" in plan.report()
    said = fs.plan(old, fresh, layout, new_layout={**new_layout, fs.ACTIVATIONS: told}, layer_map=layer_map)
    assert said.preserves() == "function"
    with pytest.raises(ValueError, match="ACTIVATIONS must map space names to one of"):
        fs.plan(old, fresh, layout, new_layout={**new_layout, fs.ACTIVATIONS: {"Dense_1": "swish"}},
                layer_map=layer_map)


@pytest.mark.parametrize("name", sorted(set(KNOWN) - {"unknown", "softplus"}))
def test_the_tracer_names_each_activation(name):
    assert classify(ACTS[name]) == name


def test_which_activation_pairs_keep_an_identity_layer():
    z = np.concatenate([np.linspace(-20, 20, 4001), [-1e6, 1e6]]).astype(np.float32)
    for before, f in ACTS.items():
        for after, g in ACTS.items():
            values = np.asarray(f(z))
            kept = np.array_equal(np.asarray(g(values)), values)
            assert keeps_identity(before, after) == kept, (before, after)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_width_change_at_large_outputs_is_within_the_documented_rounding(dtype):
    old_m, new_m = ActNet("relu", 2, hidden=32, actions=4, dtype=dtype), ActNet("relu", 2, hidden=48, actions=4, dtype=dtype)
    old, fresh = tied_and_scaled(init(old_m, 8), 40.0, tie=False), init(new_m, 8, key=1)
    result = fs.surgery(old_m, old, new_m, fresh, jnp.ones((4, 8)))
    assert result.plan.preserves() == "function"
    report = result.verify(jax.random.normal(jax.random.key(3), (1024, 8)))
    assert report.max_rel_diff <= fs.ROUNDING[dtype], report
    assert report.policy_kl is None  # Q-values are not a policy unless declared logits


# ----------------------------------------------------------------- 2. the margin and the outputs' scale


def tied_and_scaled(params, scale, tie=True):
    """The output layer scaled by `scale` (a trained agent's large Q-values), its first two
    actions tied (the same weights and bias: they tie on every input)."""
    params = jax.tree_util.tree_map(lambda p: p, params)  # a copy: the caller's tree is kept
    head = f"Dense_{max(int(k.split('_')[1]) for k in params['params'])}"
    out = dict(params["params"][head])
    kernel, bias = out["kernel"] * scale, out["bias"] + scale
    if tie:
        kernel = kernel.at[:, 1].set(kernel[:, 0])
        bias = bias.at[1].set(bias[0])
    params["params"] = {**params["params"], head: {"kernel": kernel, "bias": bias}}
    return params


def new_action_first(old_m, new_m, old, fresh, **kw):
    ids = (["a0", "a1"], ["new", "a0", "a1"])
    return fs.surgery(old_m, old, new_m, fresh, jnp.ones((4, 3)), spaces={"out": ids}, **kw)


def test_a_fixed_margin_below_the_rounding_of_large_outputs_is_not_greedy():
    old_m, new_m = ActNet("relu", 1, actions=2), ActNet("relu", 1, actions=3)
    old, fresh = tied_and_scaled(init(old_m), 1e4), init(new_m, key=1)
    x = jax.random.normal(jax.random.key(3), (256, 3))
    fixed = new_action_first(old_m, new_m, old, fresh, rules={"out": fs.mean(offset=-1e-3)})
    assert fixed.verify(x).greedy_agreement < 1.0  # the new action takes ties: 1e-3 is lost in rounding
    assert fixed.plan.preserves() == "none", fixed.plan.report()
    assert "offset -0.001 is not below" in fixed.plan.report()
    auto = new_action_first(old_m, new_m, old, fresh)  # the preset's margin follows the scale
    assert auto.plan.preserves() == "greedy", auto.plan.report()
    assert auto.verify(x).greedy_agreement == 1.0


def test_a_plan_from_shapes_cannot_check_the_margin_and_says_so():
    old = {"w": np.ones((3, 2), np.float32), "bias": np.ones(2, np.float32)}
    new = {"w": np.ones((3, 3), np.float32), "bias": np.ones(3, np.float32)}
    layout = {"w": ("obs", "out"), "bias": ("out",)}
    assert fs.plan(old, new, layout).space("out").preserves == "greedy"
    shapes = fs.plan(jax.eval_shape(lambda: old), new, layout).space("out")
    assert shapes.preserves == "none" and "shapes only" in shapes.why
    spec = fs.Spec(layout)
    jax.jit(lambda o, f: fs.transplant(o, spec, f))(old, new)  # planned from tracers: no values
    traced = spec.plan_for(jax.eval_shape(lambda: old), new).space("out")  # the cached plan
    assert traced.preserves == "none" and "traced under jax.jit" in traced.why
    assert spec.plan_for(old, new).space("out").preserves == "greedy"  # values: planned anew


def test_a_spec_derives_each_trees_margin_from_that_tree():
    """A Spec reused on a tree of the same shapes with outputs 1e4 times larger plans again: its
    margin follows the larger outputs, and the claim is checked on that tree."""
    old = {"w": np.ones((3, 2), np.float32), "bias": np.array([5.0, 5.0], np.float32)}
    new = {"w": np.ones((3, 3), np.float32), "bias": np.ones(3, np.float32)}
    layout = {"w": ("obs", "out"), "bias": ("out",)}
    spec = fs.Spec(layout, spaces={"out": (["a", "b"], ["c", "a", "b"])})
    small = spec.plan_for(old, new)
    large_old = jax.tree_util.tree_map(lambda x: x * 1e4, old)
    large = spec.plan_for(large_old, new)

    def margin(tree, p):  # how far below the old biases the new action's bias starts
        return float(np.asarray(tree["bias"]).max() - fs.transplant(tree, p, new)["bias"][0])

    assert margin(large_old, large) > margin(old, small) > 0
    moved = fs.transplant(large_old, large, new)
    x = np.random.default_rng(0).standard_normal((256, 3)).astype(np.float32)
    report = fs.verify(lambda v: v @ large_old["w"] + large_old["bias"],
                       lambda v: v @ moved["w"] + moved["bias"], x, large, outputs="out")
    assert large.space("out").preserves == "greedy" and report.greedy_agreement == 1.0


# ----------------------------------------------------------------- the property: every claim, verified

DTYPES = {"float32": 1e6, "float16": 1e3, "bfloat16": 1e6}  # the largest output scale each holds


@st.composite
def claims_case(draw):
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    return dict(  # noqa: C408 - keyword names read better here
        act=draw(st.sampled_from(sorted(set(ACTS) - {"linear"}))), dtype=dtype,
        old_depth=draw(st.integers(1, 2)), change=draw(st.sampled_from([-1, 0, 1])),
        scale=10.0 ** draw(st.integers(0, int(np.log10(DTYPES[dtype])))),
        tie=draw(st.booleans()), new_first=draw(st.booleans()), add_action=draw(st.booleans()),
        seed=draw(st.integers(0, 3)),
    )


def check_every_claim(plan, report, dtype):
    """What the report claims, checked with verify's numbers."""
    claim = plan.preserves()
    if claim == "function":
        assert report.max_rel_diff <= fs.ROUNDING[dtype], (plan.report(), report)
    if claim in ("function", "policy", "greedy"):
        assert report.greedy_agreement == 1.0, (plan.report(), report)
    return claim


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=claims_case())
def test_whatever_the_report_claims_holds_at_every_scale_activation_and_dtype(case):
    old_depth = case["old_depth"] + (1 if case["change"] < 0 else 0)
    new_depth = old_depth + case["change"]
    actions = 2 + case["add_action"]
    old_m = ActNet(case["act"], old_depth, dtype=case["dtype"])
    new_m = ActNet(case["act"], new_depth, actions=actions, dtype=case["dtype"])
    old = tied_and_scaled(init(old_m, key=case["seed"]), case["scale"], case["tie"])
    fresh = init(new_m, key=case["seed"] + 1)
    added = ["new"] if case["add_action"] else []
    new_ids = added + ["a0", "a1"] if case["new_first"] else ["a0", "a1"] + added
    if new_depth > old_depth:  # the new layers come before the output layer
        layer_map = {f"Dense_{new_depth}": f"Dense_{old_depth}", f"Dense_{old_depth}": None}
        drop = ()
    elif new_depth < old_depth:  # the last hidden layer is removed
        layer_map = {f"Dense_{new_depth}": f"Dense_{old_depth}"}
        drop = [f"Dense_{new_depth}"]
    else:
        layer_map, drop = {}, ()
    result = fs.surgery(old_m, old, new_m, fresh, jnp.ones((4, 3)), layer_map=layer_map, drop=drop,
                        spaces={"out": (["a0", "a1"], new_ids)})
    x = jax.random.normal(jax.random.key(case["seed"] + 7), (256, 3))
    claim = check_every_claim(result.plan, result.verify(x), case["dtype"])
    if new_depth < old_depth:
        assert claim == "none"


def test_the_tracer_follows_a_kernel_cast_to_the_computation_dtype():
    class Mixed(nn.Module):  # float32 parameters, bfloat16 computation
        @nn.compact
        def __call__(self, obs):
            x = nn.relu6(nn.Dense(4, dtype=jnp.bfloat16)(obs))
            return nn.Dense(2, dtype=jnp.bfloat16)(x)

    variables = init(Mixed())
    layout = fs.trace_layout(Mixed().apply, variables, jnp.zeros((4, 3)))
    assert layout[fs.ACTIVATIONS] == {"Dense_0": "relu6", "out": "linear"}
