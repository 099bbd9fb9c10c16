"""Transplant against a plain-NumPy reference, and every function-preserving rule."""

from __future__ import annotations

import copy as pycopy
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flaxsurgery as fs
from tests.conftest import MLP, examples
from tests.reference import reference_leaf

# The rules the reference covers: each one's fills (its `incoming` and `outgoing`) say what it does.
RULES = {"fresh": fs.fresh(), "zeros": fs.zeros(), "fresh_in_zero_out": fs.fresh_in_zero_out(), "mean": fs.mean()}


class CNN(nn.Module):
    channels: tuple
    kernel: int = 3
    outputs: int = 3

    @nn.compact
    def __call__(self, x):
        for c in self.channels:
            x = nn.relu(nn.Conv(c, (self.kernel, self.kernel), padding="SAME")(x))
        x = x.reshape(x.shape[:-3] + (-1,))
        return nn.Dense(self.outputs)(x)


def mlp_layout(n_layers: int) -> dict:
    spaces = ["obs"] + [f"Dense_{i}" for i in range(n_layers - 1)] + ["out"]
    return fs.chain_layout(spaces, [f"Dense_{i}" for i in range(n_layers)])


def init(model, key, shape):
    return model.init(jax.random.PRNGKey(key), jnp.zeros((1,) + shape))


def numpy_tree(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


# ----------------------------------------------------------------------------- property tests


@st.composite
def id_change(draw, n_old: int, label: str):
    """Old IDs 0..n-1 -> a random subset, permuted, plus new IDs."""
    kept = draw(st.lists(st.sampled_from(range(n_old)), unique=True, min_size=1, max_size=n_old))
    added = draw(st.integers(0, 3))
    new_ids = kept + [f"{label}{k}" for k in range(added)]
    order = draw(st.permutations(range(len(new_ids))))
    return list(range(n_old)), [new_ids[i] for i in order]


@st.composite
def mlp_case(draw):
    widths = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))  # obs, hidden..., out
    spaces = ["obs"] + [f"Dense_{i}" for i in range(len(widths) - 2)] + ["out"]
    changes = {s: draw(id_change(w, s)) for s, w in zip(spaces, widths)}
    rules = {s: draw(st.sampled_from(sorted(RULES))) for s in spaces}
    return widths, changes, rules


@settings(max_examples=examples(40), deadline=None)
@given(case=mlp_case(), seed=st.integers(0, 2**16))
def test_mlp_matches_numpy_reference(case, seed, transplant):
    widths, changes, rules = case
    n = len(widths) - 1
    layout = mlp_layout(n)
    rng = np.random.default_rng(seed)
    old = {"params": {f"Dense_{i}": {"kernel": rng.normal(size=(widths[i], widths[i + 1])).astype(np.float32),
                                     "bias": rng.normal(size=widths[i + 1]).astype(np.float32)} for i in range(n)}}
    new_width = [len(changes[s][1]) for s in changes]
    fresh = {"params": {f"Dense_{i}": {"kernel": rng.normal(size=(new_width[i], new_width[i + 1])).astype(np.float32),
                                       "bias": rng.normal(size=new_width[i + 1]).astype(np.float32)} for i in range(n)}}
    plan = fs.plan(old, fresh, layout, spaces=changes, rules={s: RULES[r] for s, r in rules.items()})
    got = transplant(old, plan, fresh)

    old_ids = {s: c[0] for s, c in changes.items()}
    new_ids = {s: c[1] for s, c in changes.items()}
    fills = {s: RULES[r] for s, r in rules.items()}
    for path, axes in layout.items():
        _, layer, name = path.split("/")
        want = reference_leaf(old["params"][layer][name], fresh["params"][layer][name], axes, axes,
                              old_ids, new_ids, fills)
        np.testing.assert_allclose(got["params"][layer][name], want, rtol=1e-6, atol=1e-6, err_msg=path)


@settings(max_examples=examples(15), deadline=None)
@given(in_change=id_change(3, "c"), out_change=id_change(4, "f"), kernel=st.sampled_from([(3, 3), (3, 5), (5, 3)]),
       rule=st.sampled_from(sorted(RULES)), seed=st.integers(0, 2**16))
def test_conv_matches_numpy_reference(in_change, out_change, kernel, rule, seed, transplant):
    rng = np.random.default_rng(seed)
    (k_old, k_new) = kernel
    axes = (fs.WINDOW, fs.WINDOW, "in", "out")
    old = {"k": rng.normal(size=(k_old, k_old, 3, 4)).astype(np.float32)}
    fresh = {"k": rng.normal(size=(k_new, k_new, len(in_change[1]), len(out_change[1]))).astype(np.float32)}
    plan = fs.plan(old, fresh, {"k": axes}, spaces={"in": in_change, "out": out_change},
                   rules={"in": RULES[rule], "out": RULES[rule]})
    want = reference_leaf(old["k"], fresh["k"], axes, axes, {"in": in_change[0], "out": out_change[0]},
                          {"in": in_change[1], "out": out_change[1]}, {"in": RULES[rule], "out": RULES[rule]})
    np.testing.assert_allclose(transplant(old, plan, fresh)["k"], want, rtol=1e-6, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class MeanInFreshOut(fs.Rule):
    """A rule the library does not ship, written as a user would: a class and nothing else."""

    name: ClassVar[str] = "mean_in_fresh_out"
    incoming: ClassVar[fs.Fill] = fs.Fill.MEAN
    outgoing: ClassVar[fs.Fill] = fs.Fill.FRESH


def test_a_new_rule_is_one_class(transplant):
    rng = np.random.default_rng(0)
    tree = lambda n_hidden: {"params": {
        "Dense_0": {"kernel": rng.normal(size=(3, n_hidden)).astype(np.float32),
                    "bias": rng.normal(size=n_hidden).astype(np.float32)},
        "Dense_1": {"kernel": rng.normal(size=(n_hidden, 2)).astype(np.float32),
                    "bias": rng.normal(size=2).astype(np.float32)}}}
    old, fresh, layout = tree(4), tree(6), mlp_layout(2)
    ids = {"obs": [0, 1, 2], "out": [0, 1]}
    changes = {"Dense_0": ([0, 1, 2, 3], ["n0", 0, 1, "n1", 2, 3])}
    plan = fs.plan(old, fresh, layout, spaces=changes, rules={"Dense_0": MeanInFreshOut()})
    got = transplant(old, plan, fresh)
    old_ids, new_ids = {**ids, "Dense_0": changes["Dense_0"][0]}, {**ids, "Dense_0": changes["Dense_0"][1]}
    rules = {"obs": fs.zeros(), "Dense_0": MeanInFreshOut(), "out": fs.zeros()}
    for path, axes in layout.items():
        _, layer, name = path.split("/")
        want = reference_leaf(old["params"][layer][name], fresh["params"][layer][name], axes, axes,
                              old_ids, new_ids, rules)
        np.testing.assert_allclose(got["params"][layer][name], want, rtol=1e-6, err_msg=path)
    assert "mean_in_fresh_out" in plan.report() and plan.space("Dense_0").preserves == "none"


@settings(max_examples=examples(20), deadline=None)
@given(case=mlp_case(), seed=st.integers(0, 2**16))
def test_permute_then_inverse_is_identity(case, seed, transplant):
    widths, _, _ = case
    rng = np.random.default_rng(seed)
    layout = mlp_layout(len(widths) - 1)
    params = numpy_tree(init(MLP(tuple(widths[1:])), seed, (widths[0],)))
    perms = {s: [int(i) for i in rng.permutation(w)] for s, w in zip(["obs", *[f"Dense_{i}" for i in range(len(widths) - 2)], "out"], widths)}
    forward = fs.plan(params, params, layout, spaces={s: (list(range(len(p))), p) for s, p in perms.items()})
    back = fs.plan(params, params, layout, spaces={s: (p, list(range(len(p)))) for s, p in perms.items()})
    there = transplant(params, forward)
    again = transplant(there, back)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_add_then_remove_is_identity(transplant):
    old = numpy_tree(init(MLP((4, 2)), 0, (2,)))
    fresh = numpy_tree(init(MLP((7, 3)), 1, (3,)))
    layout = mlp_layout(2)
    spaces = {"obs": (["a", "b"], ["a", "new", "b"]), "Dense_0": (4, 7), "out": (["l", "r"], ["l", "r", "n"])}
    grown = transplant(old, fs.plan(old, fresh, layout, spaces=spaces), fresh)
    back = {s: (n, o) for s, (o, n) in spaces.items()}
    shrunk = transplant(grown, fs.plan(grown, old, layout, spaces=back))
    jax.tree_util.tree_map(np.testing.assert_array_equal, shrunk, old)


# ----------------------------------------------------------------------------- exactness


def max_diff(model_old, old, model_new, new, plan, x, **kw):
    report = fs.verify(lambda v: model_old.apply(old, v), lambda v: model_new.apply(new, v), x, plan, **kw)
    return report


@pytest.mark.parametrize("hidden_rule", [fs.fresh_in_zero_out(), fs.zeros(), fs.mean(), fs.copy_of(2), fs.split(1), fs.split({"n0": 0, "n1": 0, "n2": 3})])
def test_hidden_rules_preserve_function(hidden_rule, transplant):
    old_m, new_m = MLP((5, 3)), MLP((8, 3))
    old, fresh = init(old_m, 0, (2,)), init(new_m, 1, (4,))
    spaces = {"obs": (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"]),
              "Dense_0": (list(range(5)), [0, 1, 2, 3, 4, "n0", "n1", "n2"])}
    plan = fs.plan(old, fresh, mlp_layout(2), spaces=spaces, rules={"Dense_0": hidden_rule})
    assert plan.preserves() == "function"
    new = transplant(old, plan, fresh)
    x = jax.random.normal(jax.random.PRNGKey(3), (256, 2))
    report = max_diff(old_m, old, new_m, new, plan, x)
    assert report.max_abs_diff <= 1e-5 and report.greedy_agreement == 1.0
    # New inputs are ignored whatever their value: the zero-rows rule.
    x_new = fs.map_units(x, plan, "obs").at[:, 0].set(3.0).at[:, 3].set(-2.0)
    np.testing.assert_allclose(new_m.apply(new, x_new), old_m.apply(old, x), atol=1e-5)


def test_split_breaks_symmetry_and_splits_outgoing(transplant):
    old = {"a": {"kernel": np.array([[1.0, 2.0]], np.float32)}, "b": {"kernel": np.array([[3.0], [5.0]], np.float32)}}
    new = {"a": {"kernel": np.zeros((1, 3), np.float32)}, "b": {"kernel": np.zeros((3, 1), np.float32)}}
    layout = {"a/kernel": ("x", "h"), "b/kernel": ("h", "y")}
    plan = fs.plan(old, new, layout, spaces={"h": ([0, 1], [0, 1, 2])}, rules={"h": fs.split(1, ratio=0.25)})
    out = transplant(old, plan)
    np.testing.assert_allclose(out["a"]["kernel"], [[1.0, 2.0, 2.0]])
    np.testing.assert_allclose(out["b"]["kernel"], [[3.0], [3.75], [1.25]])


@pytest.mark.parametrize("rule,exactness", [(fs.mean(offset=-1e-3), "greedy"), (fs.mean(offset=-20.0), "policy"),
                                            (fs.copy_of("torque0", offset=-1.0), "greedy"),
                                            (fs.mean(), "none"),  # a tie can go to the new action
                                            (fs.zeros(), "none"), (fs.fresh(), "none")])
def test_new_action_rules(rule, exactness, transplant):
    old_m, new_m = MLP((16, 16, 2)), MLP((16, 16, 3))
    old, fresh = init(old_m, 0, (6,)), init(new_m, 1, (6,))
    plan = fs.plan(old, fresh, mlp_layout(3), rules={"out": rule},
                   spaces={"out": (["torque-1", "torque0"], ["torque-1", "torque0", "torque+1"])})
    assert plan.space("out").preserves == exactness
    new = transplant(old, plan, fresh)
    x = jax.random.normal(jax.random.PRNGKey(3), (512, 6))
    report = max_diff(old_m, old, new_m, new, plan, x, outputs="out")
    assert report.max_abs_diff <= 1e-5  # the old actions' Q-values are untouched
    if exactness in ("greedy", "policy"):
        assert report.greedy_agreement == 1.0


def test_zero_q_for_new_action_steals_argmax_when_rewards_are_negative(transplant):
    # Why zeros() is not the default for outputs: every old Q below 0 makes a zero Q the argmax.
    old = {"Dense_0": {"kernel": np.zeros((1, 2), np.float32), "bias": np.array([-3.0, -2.0], np.float32)}}
    new = {"Dense_0": {"kernel": np.zeros((1, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    layout = {"Dense_0/kernel": ("obs", "out"), "Dense_0/bias": ("out",)}
    spaces = {"out": (["a", "b"], ["a", "b", "c"])}
    zero_q = transplant(old, fs.plan(old, new, layout, spaces=spaces, rules={"out": fs.zeros()}))
    mean_q = transplant(old, fs.plan(old, new, layout, spaces=spaces))
    assert int(jnp.argmax(zero_q["Dense_0"]["bias"])) == 2
    assert int(jnp.argmax(mean_q["Dense_0"]["bias"])) == 1


def test_inserted_identity_layer_after_relu_preserves_function(transplant):
    old_m, new_m = MLP((8, 2)), MLP((8, 8, 2))
    old, fresh = init(old_m, 0, (4,)), init(new_m, 1, (4,))
    plan = fs.plan(old, fresh, mlp_layout(2), new_layout=mlp_layout(3),
                   layer_map={"params/Dense_1": None, "params/Dense_2": "params/Dense_1"})
    assert "identity" in plan.report()
    new = transplant(old, plan, fresh)
    np.testing.assert_array_equal(new["params"]["Dense_1"]["kernel"], np.eye(8))
    x = jax.random.normal(jax.random.PRNGKey(3), (128, 4))
    assert max_diff(old_m, old, new_m, new, plan, x).max_abs_diff <= 1e-5


def test_conv_identity_layer_and_grown_kernel_with_same_padding(transplant):
    old_m, new_m = CNN((4,), kernel=3), CNN((6, 6), kernel=5)
    x = jax.random.normal(jax.random.PRNGKey(3), (16, 7, 7, 2))
    old, fresh = init(old_m, 0, (7, 7, 2)), init(new_m, 1, (7, 7, 2))
    flat = lambda space: fs.Flat(space, 49)
    old_layout = fs.chain_layout(["obs", flat("Conv_0"), "out"], ["Conv_0", "Dense_0"], spatial_dims={"Conv_0": 2})
    new_layout = fs.chain_layout(["obs", "Conv_0", flat("Conv_1"), "out"], ["Conv_0", "Conv_1", "Dense_0"],
                                 spatial_dims={"Conv_0": 2, "Conv_1": 2})
    # Conv_0 widens 4 -> 6 (fresh in, zero out); Conv_1 is inserted as an identity whose
    # output space Conv_1 takes the place of Conv_0 before the flatten.
    spaces = {"Conv_1": (0, list(range(6)))}
    plan = fs.plan(old, fresh, old_layout, new_layout=new_layout, spaces=spaces,
                   layer_map={"params/Conv_1": None}, rules={"Conv_1": fs.fresh_in_zero_out()})
    new = transplant(old, plan, fresh)
    kernel = np.asarray(new["params"]["Conv_1"]["kernel"])
    assert kernel.shape == (5, 5, 6, 6)
    np.testing.assert_array_equal(kernel[2, 2], np.eye(6))
    assert np.count_nonzero(kernel) == 6
    np.testing.assert_allclose(new_m.apply(new, x), old_m.apply(old, x), atol=1e-5)


def test_flatten_channel_permutation_moves_dense_rows(transplant):
    old = {"Dense_0": {"kernel": np.arange(12, dtype=np.float32).reshape(6, 2)}}  # 2 positions x 3 channels
    layout = {"Dense_0/kernel": (fs.Flat("c", 2), "out")}
    plan = fs.plan(old, old, layout, spaces={"c": ([0, 1, 2], [2, 0, 1])})
    rows = np.asarray(transplant(old, plan)["Dense_0"]["kernel"])[:, 0] / 2
    np.testing.assert_array_equal(rows, [2, 0, 1, 5, 3, 4])  # channel c's rows are c, c+3


def test_batchnorm_new_features_are_neutral_and_batch_stats_follow(transplant):
    class Net(nn.Module):
        width: int

        @nn.compact
        def __call__(self, x):
            x = nn.Dense(self.width)(x)
            x = nn.BatchNorm(use_running_average=True)(x)
            return nn.Dense(2)(nn.relu(x))

    old_m, new_m = Net(3), Net(5)
    old, fresh = init(old_m, 0, (4,)), init(new_m, 1, (4,))
    old = jax.tree_util.tree_map(lambda v: v + 0.5, old)  # non-trivial statistics
    layout = {"params/Dense_0/kernel": ("obs", "h"), "params/Dense_0/bias": ("h",),
              "params/BatchNorm_0/scale": ("h",), "params/BatchNorm_0/bias": ("h",),
              "batch_stats/BatchNorm_0/mean": ("h",), "batch_stats/BatchNorm_0/var": ("h",),
              "params/Dense_1/kernel": ("h", "out"), "params/Dense_1/bias": ("out",)}
    plan = fs.plan(old, fresh, layout, rules={"h": fs.zeros()})
    new = transplant(old, plan, fresh)
    np.testing.assert_array_equal(new["params"]["BatchNorm_0"]["scale"][3:], 1.0)
    np.testing.assert_array_equal(new["batch_stats"]["BatchNorm_0"]["var"][3:], 1.0)
    np.testing.assert_array_equal(new["batch_stats"]["BatchNorm_0"]["mean"][3:], 0.0)
    x = jax.random.normal(jax.random.PRNGKey(3), (64, 4))
    np.testing.assert_allclose(new_m.apply(new, x), old_m.apply(old, x), atol=1e-5)


def test_embedding_vocabulary_as_a_space(transplant):
    old = {"Embed_0": {"embedding": np.arange(6, dtype=np.float32).reshape(3, 2)}}
    new = {"Embed_0": {"embedding": np.zeros((4, 2), np.float32)}}
    plan = fs.plan(old, new, {"Embed_0/embedding": ("vocab", "features")},
                   spaces={"vocab": (["a", "b", "c"], ["c", "a", "b", "d"])}, rules={"vocab": fs.mean(outgoing="mean")})
    np.testing.assert_array_equal(transplant(old, plan)["Embed_0"]["embedding"],
                                  [[4, 5], [0, 1], [2, 3], [2, 3]])


# ----------------------------------------------------------------------------- jit, vmap, purity


def cartpole_plan(preset="preserving"):
    old_m, new_m = MLP((8, 2)), MLP((16, 2))
    old, fresh = init(old_m, 0, (2,)), init(new_m, 1, (4,))
    plan = fs.plan(old, fresh, mlp_layout(2), preset=preset,
                   spaces={"obs": (["x_dot", "theta"], ["x", "x_dot", "theta", "theta_dot"])})
    return old_m, new_m, old, fresh, plan


@pytest.mark.parametrize("preset", ["preserving", "seed"])
def test_jit_equals_eager_and_does_not_retrace(preset):
    _, _, old, fresh, plan = cartpole_plan(preset)
    traces = []

    def counted(o, p, f):
        traces.append(1)
        return fs.transplant(o, p, f)

    jitted = jax.jit(counted)  # the plan is a jit argument: its arrays are its pytree leaves
    eager = fs.transplant(old, plan, fresh)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jitted(old, plan, fresh), eager)
    other = jax.tree_util.tree_map(lambda v: v * 2.0, old)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jitted(other, plan, fresh),
                           fs.transplant(other, plan, fresh))
    assert len(traces) == 1


def test_vmap_over_population_equals_loop():
    old_m, new_m, _, _, plan = cartpole_plan()
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    olds = jax.vmap(lambda k: old_m.init(k, jnp.zeros((1, 2))))(keys)
    freshes = jax.vmap(lambda k: new_m.init(k, jnp.zeros((1, 4))))(keys + 1)
    stacked = jax.jit(jax.vmap(lambda o, f: fs.transplant(o, plan, f)))(olds, freshes)
    for i in range(8):
        agent = lambda tree, i=i: jax.tree_util.tree_map(lambda v: v[i], tree)
        jax.tree_util.tree_map(np.testing.assert_array_equal, agent(stacked),
                               fs.transplant(agent(olds), plan, agent(freshes)))


def test_inputs_are_not_changed():
    _, _, old, fresh, plan = cartpole_plan()
    old_np, fresh_np = numpy_tree(old), numpy_tree(fresh)
    before = pycopy.deepcopy((old_np, fresh_np))
    fs.transplant(old_np, plan, fresh_np)
    jax.tree_util.tree_map(np.testing.assert_array_equal, (old_np, fresh_np), before)


def test_fresh_values_required_when_a_rule_needs_them():
    _, _, old, _, plan = cartpole_plan()
    with pytest.raises(ValueError, match="fresh values for .*params/Dense_0/kernel"):
        fs.transplant(old, plan)


def test_concat_segments_take_their_own_rules(transplant):
    old = {"w": np.arange(10, dtype=np.float32).reshape(5, 2)}  # rows: pos a, b | vel u, v, w
    fresh = {"w": -np.ones((7, 2), np.float32)}
    layout = {"w": (fs.Concat(("pos", "vel")), "out")}
    spaces = {"pos": (["a", "b"], ["b", "a", "c"]), "vel": (["u", "v", "w"], ["u", "v", "w", "z"])}
    plan = fs.plan(old, fresh, layout, spaces=spaces, rules={"pos": fs.zeros(), "vel": fs.fresh()})
    got = np.asarray(transplant(old, plan, fresh)["w"])
    np.testing.assert_array_equal(got, [[2, 3], [0, 1], [0, 0], [4, 5], [6, 7], [8, 9], [-1, -1]])


def test_grid_heads_by_features(transplant):
    # A (heads x features) axis, heads slowest: a new head's rows are the new block.
    old = {"w": np.arange(4, dtype=np.float32).reshape(4, 1)}  # 2 heads x 2 features
    layout = {"w": (fs.Grid(("heads", "dim")), None)}
    plan = fs.plan(old, {"w": np.zeros((6, 1), np.float32)}, layout,
                   spaces={"heads": ([0, 1], [1, 0, 2])}, rules={"heads": fs.zeros()})
    np.testing.assert_array_equal(np.asarray(transplant(old, plan)["w"])[:, 0], [2, 3, 0, 1, 0, 0])


def test_grid_sizes_need_ids_when_two_spaces_are_unknown():
    layout = {"w": (fs.Grid(("heads", "dim")), None)}
    with pytest.raises(ValueError, match=r"cannot tell the sizes of spaces \['dim', 'heads'\] apart"):
        fs.plan({"w": np.zeros((4, 1), np.float32)}, {"w": np.zeros((4, 1), np.float32)}, layout)


def test_mean_keeps_the_greedy_action_under_a_tie(transplant):
    # One old action: the plain mean ties with it, and argmax takes the first unit, the new one.
    old = {"Dense_0": {"kernel": np.ones((1, 1), np.float32), "bias": np.array([-5.0], np.float32)}}
    new = {"Dense_0": {"kernel": np.zeros((1, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    layout = {"Dense_0/kernel": ("obs", "out"), "Dense_0/bias": ("out",)}
    spaces = {"out": (["noop"], ["fire", "noop"])}
    tied = transplant(old, fs.plan(old, new, layout, spaces=spaces, rules={"out": fs.mean()}))
    kept = transplant(old, fs.plan(old, new, layout, spaces=spaces))  # the preset's margin
    np.testing.assert_allclose(kept["Dense_0"]["bias"], [-5.0 - 1e-3, -5.0])
    x = jnp.array([[1.0], [-2.0]])
    q = lambda p: x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    assert jnp.argmax(q(tied), -1).tolist() == [0, 0]
    assert jnp.argmax(q(kept), -1).tolist() == [1, 1]


# ----------------------------------------------------------------------------- the boundary


def test_the_apply_module_imports_only_the_plan_type_and_unit_helpers():
    import ast
    import importlib
    import pathlib

    apply_module = importlib.import_module("flaxsurgery.transplant")  # fs.transplant is the function
    tree = ast.parse(pathlib.Path(apply_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flaxsurgery")}
    assert imported <= {"flaxsurgery.paths", "flaxsurgery.plans", "flaxsurgery.units"}, imported


def test_transplant_asks_a_planning_object_for_its_plan():
    old_m, new_m = MLP((4, 2)), MLP((6, 2))
    old, fresh = init(old_m, 0, (3,)), init(new_m, 1, (3,))
    plan = fs.plan(old, fresh, mlp_layout(2))
    asked = []

    class Planner:  # anything with plan_for(old, fresh), as a Spec
        def plan_for(self, o, f):
            asked.append((o, f))
            return plan

    got = fs.transplant(old, Planner(), fresh)
    assert len(asked) == 1 and asked[0][0] is old and asked[0][1] is fresh
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(fs.transplant(old, plan, fresh))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="needs fresh_tree"):
        fs.transplant(old, Planner())
    with pytest.raises(ValueError, match="takes a Plan .* or a Spec, got dict"):
        fs.transplant(old, {"not": "a plan"}, fresh)
