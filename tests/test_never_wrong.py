"""Never silently wrong: every plan transplants what its report claims, or raises naming why.

One section per class of input that used to come out wrong while the report said it was fine,
then a property test over random specs: whatever ``plan.report()`` claims, ``fs.verify`` checks.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flaxsurgery as fs
from flaxsurgery.paths import flatten
from flaxsurgery.rules import GREEDY_MARGIN
from tests.conftest import examples


class Net(nn.Module):
    """An MLP with an optional norm after the first hidden layer and an optional output bias."""

    hidden: int = 8
    actions: int = 2
    norm: str = ""  # "", "layer" or "batch"
    out_bias: bool = True
    depth: int = 1

    @nn.compact
    def __call__(self, obs):
        x = obs
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.hidden)(x))
        if self.norm == "layer":
            x = nn.LayerNorm()(x)
        elif self.norm == "batch":
            x = nn.BatchNorm(use_running_average=True)(x)
        return nn.Dense(self.actions, use_bias=self.out_bias)(x)


def variables(model, n_obs, key=0, batch_stats_noise=True):
    v = model.init(jax.random.key(key), jnp.zeros((4, n_obs)))
    if "batch_stats" in v and batch_stats_noise:  # trained-looking statistics, not 0 and 1
        k1, k2 = jax.random.split(jax.random.key(key + 100))
        stats = v["batch_stats"]["BatchNorm_0"]
        v = {**v, "batch_stats": {"BatchNorm_0": {
            "mean": jax.random.normal(k1, stats["mean"].shape),
            "var": jax.random.uniform(k2, stats["var"].shape, minval=0.5, maxval=2.0)}}}
    return v


def traced(model, v, n_obs):
    return fs.trace_layout(model.apply, v, jnp.zeros((4, n_obs)))


def problems_of(excinfo) -> list[str]:
    return [line[4:] for line in str(excinfo.value).splitlines() if line.startswith("  - ")]


def check_claims(plan, old_fn, new_fn, x, outputs="out"):
    """Whatever the plan claims, checked: the claim and the report."""
    report = fs.verify(old_fn, new_fn, x, plan, outputs=outputs, logits=True)  # the KL too
    claim = plan.preserves()
    if claim == "function":
        assert report.max_abs_diff <= 1e-5, (plan.report(), report)
        assert report.max_rel_diff <= fs.ROUNDING["float32"], (plan.report(), report)
    if claim in ("function", "policy", "greedy"):
        assert report.greedy_agreement == 1.0, (plan.report(), report)
    if claim == "policy":
        assert report.policy_kl <= 1e-6, (plan.report(), report)
    return claim, report


# ----------------------------------------------------------------- 1. unmapped axes that change size


def test_chain_layout_without_its_norm_layer_is_rejected_not_padded():
    old_m, new_m = Net(8, norm="layer"), Net(12, norm="layer")
    old, fresh = variables(old_m, 3), variables(new_m, 3, 1)
    layout = fs.chain_layout(["obs", "h", "out"], ["Dense_0", "Dense_1"])  # LayerNorm_0 not named
    with pytest.raises(ValueError) as excinfo:
        fs.plan(old, fresh, layout)
    problems = problems_of(excinfo)
    assert any("leaf 'params/LayerNorm_0/scale' axis 0" in p and "size changes from 8 to 12" in p
               for p in problems), problems
    assert any("'params/LayerNorm_0/bias' axis 0" in p for p in problems)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_chain_layout_covers_norm_layers(norm):
    old_m, new_m = Net(8, norm=norm), Net(12, norm=norm)
    old, fresh = variables(old_m, 3), variables(new_m, 3, 1)
    named = {"layer_norms" if norm == "layer" else "batch_norms": {f"{norm.title()}Norm_0": "h"}}
    layout = fs.chain_layout(["obs", "h", "out"], ["Dense_0", "Dense_1"], **named)
    plan = fs.plan(old, fresh, layout)
    new = fs.transplant(old, plan, fresh)
    x = jax.random.normal(jax.random.key(2), (256, 3))
    claim, report = check_claims(plan, lambda v: old_m.apply(old, v), lambda v: new_m.apply(new, v), x)
    if norm == "layer":  # the norm's statistics span the hidden units: new units change them
        assert plan.space("h").preserves == "none" and "mixes" in plan.space("h").why
        assert report.max_abs_diff > 1e-3  # and indeed the function changed
    else:  # BatchNorm normalises each unit alone
        assert claim == "function"
        np.testing.assert_array_equal(new["batch_stats"]["BatchNorm_0"]["var"][:8],
                                      old["batch_stats"]["BatchNorm_0"]["var"])


def test_traced_layout_marks_layer_norm_mixing():
    model = Net(8, norm="layer")
    layout = traced(model, variables(model, 3), 3)
    assert layout[fs.MIXING] == ("Dense_0",)
    assert layout["params/LayerNorm_0/scale"] == ("Dense_0",)


def test_a_kept_collection_that_changes_size_is_rejected():
    old = {"params": {"w": np.ones((2, 3), np.float32)}, "intermediates": {"h": np.ones((5, 3), np.float32)}}
    new = {"params": {"w": np.ones((2, 4), np.float32)}, "intermediates": {"h": np.ones((5, 4), np.float32)}}
    with pytest.raises(ValueError, match=re.escape("leaf 'intermediates/h' axis 1 (source 'intermediates/h'): "
                                                   "size changes from 3 to 4")):
        fs.plan(old, new, {"params/w": ("obs", "out")})


def test_a_unit_axis_marked_none_cannot_change_size():
    old, new = {"w": np.ones((2, 3), np.float32)}, {"w": np.ones((2, 5), np.float32)}
    with pytest.raises(ValueError, match="only a conv window .WINDOW in both. may be padded"):
        fs.plan(old, new, {"w": ("obs", None)})
    plan = fs.plan(old, {"w": np.ones((3, 3), np.float32)}, {"w": ("obs", None)})  # same size: kept
    assert fs.transplant(old, plan)["w"].shape == (3, 3)


def test_windows_grow_around_their_centre():
    old = {"k": np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1)}
    new = {"k": np.zeros((5, 5, 1, 1), np.float32)}
    axes = (fs.WINDOW, fs.WINDOW, "in", "out")
    grown = fs.transplant(old, fs.plan(old, new, {"k": axes}))["k"][..., 0, 0]
    np.testing.assert_array_equal(grown[1:4, 1:4], old["k"][..., 0, 0])
    assert float(jnp.abs(grown).sum()) == float(old["k"].sum())


# ----------------------------------------------------------------- 2. optimizer and training state


def mlp_params(hidden, actions, n_obs, key):
    return Net(hidden, actions).init(jax.random.key(key), jnp.zeros((1, n_obs)))["params"]


OPTIMIZERS = {
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2),
    "sgd_nesterov": lambda: optax.sgd(1e-2, momentum=0.9, nesterov=True),
    "lion": lambda: optax.lion(1e-3),
    "rmsprop": lambda: optax.rmsprop(1e-2),
    "adafactor": lambda: optax.adafactor(1e-2, min_dim_size_to_factor=4),
    "adafactor_unfactored": lambda: optax.adafactor(1e-2, factored=False),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                                 optax.scale_by_schedule(optax.linear_schedule(-1e-2, 0.0, 100))),
    "masked": lambda: optax.masked(optax.adam(1e-2), lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 1, p)),
    "multi_transform": lambda: optax.multi_transform(
        {"a": optax.adam(1e-2), "s": optax.sgd(1e-2, momentum=0.9)},
        lambda p: jax.tree_util.tree_map(lambda x: "a" if x.ndim > 1 else "s", p)),
    "inject_hyperparams": lambda: optax.inject_hyperparams(optax.adam)(
        learning_rate=optax.linear_schedule(1e-2, 0.0, 100)),
    "multisteps": lambda: optax.MultiSteps(optax.adam(1e-2), 3),
    "ema": lambda: optax.chain(optax.ema(0.9), optax.sgd(1e-2)),
    "schedule_free": lambda: optax.contrib.schedule_free_adamw(1e-2, warmup_steps=5),
    "adagrad": lambda: optax.adagrad(1e-2),
    "amsgrad": lambda: optax.amsgrad(1e-2),
}


def trained_state(opt, params, steps=4):
    state = opt.init(params)
    for i in range(steps):
        grads = jax.tree_util.tree_map(lambda p, i=i: jnp.sin(p * (i + 1.0)) + 0.1, params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


GROWTH = {"obs": (["b", "c"], ["a", "b", "c"]), "out": (["l", "r"], ["l", "n", "r"])}


def growth_plan(old, fresh):
    layout = fs.chain_layout(["obs", "h", "out"], ["Dense_0", "Dense_1"], prefix="")
    return fs.plan(old, fresh, layout, spaces=GROWTH)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_state_moves_with_the_parameters(name):
    opt = OPTIMIZERS[name]()
    old, state = trained_state(opt, mlp_params(6, 2, 2, 0))
    fresh = mlp_params(9, 3, 3, 1)
    plan = growth_plan(old, fresh)
    new = fs.transplant(old, plan, fresh)
    fresh_state = opt.init(fresh)
    new_state = fs.transplant_state(state, plan, fresh_state)

    old_leaves, new_leaves, init_leaves = flatten(state)[0], flatten(new_state)[0], flatten(fresh_state)[0]
    assert new_leaves.keys() == init_leaves.keys()
    kernel_paths = [p for p in new_leaves if p.endswith("Dense_0/kernel") and np.shape(new_leaves[p]) == (3, 9)]
    for path in kernel_paths:
        field = path.split("/")[-3]
        got, old_k = np.asarray(new_leaves[path]), np.asarray(old_leaves[path])
        np.testing.assert_array_equal(got[1:, :6], old_k, err_msg=path)  # kept units keep theirs
        if field == "z":  # schedule-free's z is a copy of the parameters: moved like them
            np.testing.assert_array_equal(got[0], 0.0)  # a new input's outgoing weights
            np.testing.assert_array_equal(got[1:, 6:], np.asarray(init_leaves[path])[1:, 6:])
        else:  # statistics: new units start where the optimizer starts them
            np.testing.assert_array_equal(got[0], np.asarray(init_leaves[path])[0], err_msg=path)
            np.testing.assert_array_equal(got[:, 6:], np.asarray(init_leaves[path])[:, 6:], err_msg=path)
    for path, leaf in new_leaves.items():  # counters and hyperparameters kept
        if np.ndim(leaf) == 0:
            np.testing.assert_array_equal(leaf, old_leaves[path], err_msg=path)
    grads = jax.tree_util.tree_map(jnp.ones_like, new)
    updates, _ = opt.update(grads, new_state, new)
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree_util.tree_leaves(updates)), name


def test_adafactor_factored_statistics_are_refactored_from_the_full_estimate():
    opt = optax.adafactor(1e-2, min_dim_size_to_factor=4)
    old, state = trained_state(opt, mlp_params(6, 2, 5, 0))  # Dense_0 kernel (5, 6): factored
    fresh = mlp_params(9, 2, 5, 1)  # (5, 9): the largest axis is still axis 1
    layout = fs.chain_layout(["obs", "h", "out"], ["Dense_0", "Dense_1"], prefix="")
    plan = fs.plan(old, fresh, layout)
    new_state = fs.transplant_state(state, plan, opt.init(fresh))
    row, col = np.asarray(state[0].v_row["Dense_0"]["kernel"]), np.asarray(state[0].v_col["Dense_0"]["kernel"])
    assert row.shape == (5,) and col.shape == (6,)  # v_row drops d0 = axis 1, v_col drops d1 = axis 0
    full = (row / row.mean())[:, None] * col[None, :]  # the estimate Adafactor divides by
    grown = np.zeros((5, 9), np.float32)
    grown[:, :6] = full  # new hidden units: no second moment yet
    np.testing.assert_allclose(new_state[0].v_row["Dense_0"]["kernel"], grown.mean(1), rtol=1e-5)
    np.testing.assert_allclose(new_state[0].v_col["Dense_0"]["kernel"], grown.mean(0), rtol=1e-5)
    # an unchanged leaf's statistics are kept exactly
    np.testing.assert_array_equal(new_state[0].v["Dense_1"]["bias"], state[0].v["Dense_1"]["bias"])


def test_plan_on_linen_variables_and_optimizer_on_their_params():
    model, new_model = Net(6, 2), Net(9, 3)
    old_vars, fresh_vars = variables(model, 2), variables(new_model, 3, 1)
    opt = optax.adam(1e-2)
    params, state = trained_state(opt, old_vars["params"])
    old_vars = {"params": params}
    plan = fs.plan(old_vars, fresh_vars, traced(model, old_vars, 2), new_layout=traced(new_model, fresh_vars, 3),
                   spaces=GROWTH | {"obs": (["b", "c"], ["a", "b", "c"])})
    new_state = fs.transplant_state(state, plan, opt.init(fresh_vars["params"]))
    mu = new_state[0].mu["Dense_0"]["kernel"]
    assert mu.shape == (3, 9)
    np.testing.assert_array_equal(mu[1:, :6], state[0].mu["Dense_0"]["kernel"])
    np.testing.assert_array_equal(mu[0], 0.0)


def test_lookahead_parameters_and_state():
    opt = optax.lookahead(optax.adam(1e-2), sync_period=2, slow_step_size=0.5)
    params = optax.LookaheadParams.init_synced(mlp_params(6, 2, 2, 0))
    state = opt.init(params)
    for i in range(3):  # lookahead takes the fast parameters' gradients
        grads = jax.tree_util.tree_map(lambda p, i=i: jnp.sin(p * (i + 1.0)) + 0.1, params.fast)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    fresh_params = optax.LookaheadParams.init_synced(mlp_params(9, 3, 3, 1))
    plan = growth_plan(params.fast, fresh_params.fast)
    new_params = fs.transplant_state(params, plan, fresh_params)  # fast and slow: like parameters
    for which in ("fast", "slow"):
        np.testing.assert_array_equal(getattr(new_params, which)["Dense_0"]["kernel"],
                                      fs.transplant(getattr(params, which), plan, fresh_params.fast)["Dense_0"]["kernel"])
    new_state = fs.transplant_state(state, plan, opt.init(fresh_params))
    updates, _ = opt.update(jax.tree_util.tree_map(jnp.ones_like, new_params.fast), new_state, new_params)
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree_util.tree_leaves(updates))


def test_a_train_state_moves_whole_and_keeps_the_greedy_action():
    model, new_model = Net(6, 2), Net(9, 3)
    opt = optax.adam(1e-2)
    params, _ = trained_state(opt, variables(model, 2)["params"])
    old_ts = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=opt)
    old_ts = old_ts.apply_gradients(grads=jax.tree_util.tree_map(jnp.ones_like, params))
    fresh_ts = train_state.TrainState.create(apply_fn=new_model.apply, tx=opt,
                                             params=variables(new_model, 3, 1)["params"])
    plan = growth_plan(old_ts.params, fresh_ts.params)
    new_ts = fs.transplant_state(old_ts, plan, fresh_ts)
    assert int(new_ts.step) == 1
    x = jax.random.normal(jax.random.key(3), (512, 2))
    claim, report = check_claims(plan, lambda v: model.apply({"params": old_ts.params}, v),
                                 lambda v: new_model.apply({"params": new_ts.params}, v), x)
    assert claim == "greedy" and report.greedy_agreement == 1.0
    np.testing.assert_array_equal(new_ts.opt_state[0].mu["Dense_1"]["kernel"][:, 1], 0.0)  # new action


def test_counts_reset_separately():
    opt = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(optax.linear_schedule(-1.0, 0.0, 10)))
    old, state = trained_state(opt, mlp_params(6, 2, 2, 0))
    fresh = mlp_params(9, 3, 3, 1)
    plan = growth_plan(old, fresh)
    kept = fs.transplant_state(state, plan, opt.init(fresh))
    bias = fs.transplant_state(state, plan, opt.init(fresh), reset=["bias_correction"])
    schedule = fs.transplant_state(state, plan, opt.init(fresh), reset=["schedule"])
    assert (int(kept[0].count), int(kept[1].count)) == (4, 4)
    assert (int(bias[0].count), int(bias[1].count)) == (0, 4)
    assert (int(schedule[0].count), int(schedule[1].count)) == (4, 0)
    with pytest.raises(ValueError, match="reset takes a collection of"):
        fs.transplant_state(state, plan, opt.init(fresh), reset="schedule")


def test_an_unknown_parameter_shaped_field_is_rejected_by_name():
    old, fresh = mlp_params(6, 2, 2, 0), mlp_params(9, 3, 3, 1)
    plan = growth_plan(old, fresh)
    with pytest.raises(ValueError, match=re.escape("state leaf 'polyak/Dense_0/kernel' is shaped like parameter "
                                                   "'Dense_0/kernel' and held in field 'polyak'")):
        fs.transplant_state({"polyak": old}, plan, {"polyak": fresh})
    moved = fs.transplant_state({"polyak": old}, plan, {"polyak": fresh}, kinds={"polyak": "params"})
    np.testing.assert_array_equal(moved["polyak"]["Dense_0"]["kernel"], fs.transplant(old, plan, fresh)["Dense_0"]["kernel"])


@pytest.mark.parametrize("rule", [fs.copy_of("l", offset=-1.0), fs.split("l")])
def test_copied_and_split_units_start_with_fresh_moments(rule):
    opt = optax.adam(1e-2)
    old, state = trained_state(opt, mlp_params(6, 2, 2, 0))
    fresh = mlp_params(6, 2, 2, 1)
    space = "out" if rule.name == "copy_of" else "h"
    ids = (["l", "r"], ["l", "r", "n"]) if rule.name == "copy_of" else (list(range(6)), list(range(6)) + ["n"])
    fresh = mlp_params(6, 3, 2, 1) if rule.name == "copy_of" else mlp_params(7, 2, 2, 1)
    layout = fs.chain_layout(["obs", "h", "out"], ["Dense_0", "Dense_1"], prefix="")
    rule = fs.split(0) if rule.name == "split" else rule
    plan = fs.plan(old, fresh, layout, spaces={space: ids}, rules={space: rule})
    new_state = fs.transplant_state(state, plan, opt.init(fresh))
    mu = new_state[0].mu
    if rule.name == "copy_of":
        np.testing.assert_array_equal(mu["Dense_1"]["kernel"][:, 2], 0.0)
    else:  # neither the new unit's moments nor a scaled copy of its source's
        np.testing.assert_array_equal(mu["Dense_0"]["kernel"][:, 6], 0.0)
        np.testing.assert_array_equal(mu["Dense_1"]["kernel"][:6], state[0].mu["Dense_1"]["kernel"])


# ----------------------------------------------------------------- 3. reports that overclaim


def out_plan(old_m, new_m, rules=None, preset="preserving", n_obs=3, new_first=True, **kwargs):
    old, fresh = variables(old_m, n_obs), variables(new_m, n_obs, 1)
    old_ids = [f"a{i}" for i in range(old_m.actions)]
    new_ids = (["new"] + old_ids) if new_first else (old_ids + ["new"])
    plan = fs.plan(old, fresh, traced(old_m, old, n_obs), new_layout=traced(new_m, fresh, n_obs),
                   spaces={"out": (old_ids, new_ids)}, rules=rules, preset=preset, **kwargs)
    return old, plan, fs.transplant(old, plan, fresh)


def test_a_positive_offset_is_not_reported_greedy():
    old_m, new_m = Net(8, 2), Net(8, 3)
    old, plan, new = out_plan(old_m, new_m, rules={"out": fs.mean(offset=100.0)})
    assert plan.space("out").preserves == "none" and "offset 100 is not negative" in plan.report()
    x = jax.random.normal(jax.random.key(2), (256, 3))
    assert fs.verify(lambda v: old_m.apply(old, v), lambda v: new_m.apply(new, v), x, plan).greedy_agreement == 0.0


def test_mean_over_an_empty_old_space_is_rejected():
    old, new = {"w": np.ones((2, 0), np.float32)}, {"w": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match="space 'out': rule mean takes the mean over the old units, but the old "
                                         "network has none"):
        fs.plan(old, new, {"w": ("obs", "out")})


def test_an_output_layer_without_bias_cannot_hold_the_margin():
    old_m, new_m = Net(8, 2, out_bias=False), Net(8, 3, out_bias=False)
    _, plan, _ = out_plan(old_m, new_m)
    assert plan.space("out").preserves == "none"
    assert "lands on no bias" in plan.space("out").why
    assert "lands on no bias" in plan.report()


def test_a_bias_named_otherwise_takes_the_margin():
    old = {"w": np.ones((3, 2), np.float32), "b": np.array([1.0, 1.0], np.float32)}
    new = {"w": np.ones((3, 3), np.float32), "b": np.zeros(3, np.float32)}
    layout = {"w": ("obs", "out"), "b": ("out",)}
    plan = fs.plan(old, new, layout, spaces={"out": (["x", "y"], ["n", "x", "y"])})
    assert plan.space("out").preserves == "greedy"
    out = fs.transplant(old, plan)
    assert float(out["b"][0]) == pytest.approx(1.0 - GREEDY_MARGIN)
    fns = [lambda v, p=p: v @ p["w"] + p["b"] for p in (old, out)]
    assert fs.verify(*fns, np.ones((4, 3), np.float32), plan).greedy_agreement == 1.0  # every Q ties


def test_a_margin_too_small_for_the_dtype_is_not_greedy():
    old = {"w": np.ones((3, 2), jnp.bfloat16), "bias": np.ones(2, jnp.bfloat16)}
    new = {"w": np.ones((3, 3), jnp.bfloat16), "bias": np.ones(3, jnp.bfloat16)}
    layout = {"w": ("obs", "out"), "bias": ("out",)}
    plan = fs.plan(old, new, layout, rules={"out": fs.mean(offset=-GREEDY_MARGIN)})
    assert plan.space("out").preserves == "none" and "bfloat16" in plan.space("out").why
    auto = fs.plan(old, new, layout)  # the preset's margin follows the dtype
    assert auto.space("out").preserves == "greedy"
    assert float(fs.transplant(old, auto)["bias"][2]) < 1.0


def test_neutral_values_follow_the_leaf_and_unknown_names_are_asked_for():
    old = {"norm": {"mean": np.full(2, 3.0, np.float32), "std": np.full(2, 2.0, np.float32)}}
    new = {"norm": {"mean": np.zeros(3, np.float32), "std": np.zeros(3, np.float32)}}
    layout = {"norm/mean": ("obs",), "norm/std": ("obs",)}
    out = fs.transplant(old, fs.plan(old, new, layout, rules={"obs": fs.zeros()}))
    np.testing.assert_array_equal(out["norm"]["std"], [2.0, 2.0, 1.0])  # a new feature divides by 1
    np.testing.assert_array_equal(out["norm"]["mean"], [3.0, 3.0, 0.0])
    odd = {"n": {"gain": np.ones(2, np.float32)}}
    with pytest.raises(ValueError, match=re.escape("leaf 'n/gain': new units take the neutral value, but the name "
                                                   "'gain' does not say")):
        fs.plan(odd, {"n": {"gain": np.ones(3, np.float32)}}, {"n/gain": ("obs",)}, rules={"obs": fs.zeros()})
    told = fs.plan(odd, {"n": {"gain": np.ones(3, np.float32)}}, {"n/gain": ("obs",)},
                   rules={"obs": fs.zeros()}, neutral={"gain": 1.0})
    np.testing.assert_array_equal(fs.transplant(odd, told)["n"]["gain"], [1.0, 1.0, 1.0])


def test_a_softmax_inside_the_model_mixes_the_actions():
    class Policy(nn.Module):
        @nn.compact
        def __call__(self, obs, actions=2):
            return jax.nn.softmax(nn.Dense(self.actions)(nn.relu(nn.Dense(8)(obs))))
        actions: int = 2

    old_m, new_m = Policy(2), Policy(3)
    old, fresh = variables(old_m, 3), variables(new_m, 3, 1)
    layout = traced(old_m, old, 3)
    assert layout[fs.MIXING] == ("out",)
    plan = fs.plan(old, fresh, layout, new_layout=traced(new_m, fresh, 3))
    assert plan.space("out").preserves == "none"


# ----------------------------------------------------------------- 4. layers paired by auto-name


def test_an_inserted_layer_is_not_paired_by_its_shifted_name():
    old_m, new_m = Net(8, 2, depth=1), Net(8, 2, depth=2)
    old, fresh = variables(old_m, 3), variables(new_m, 3, 1)
    old_layout, new_layout = traced(old_m, old, 3), traced(new_m, fresh, 3)
    with pytest.raises(ValueError) as excinfo:
        fs.plan(old, fresh, old_layout, new_layout=new_layout)
    (problem,) = [p for p in problems_of(excinfo) if "renamed" in p]
    assert "new layer 'params/Dense_1'" in problem and "output space 'out' in the old network" in problem
    assert "{'params/Dense_2': 'params/Dense_1', 'params/Dense_1': None}" in problem
    plan = fs.plan(old, fresh, old_layout, new_layout=new_layout,
                   layer_map={"params/Dense_2": "params/Dense_1", "params/Dense_1": None})
    new = fs.transplant(old, plan, fresh)
    x = jax.random.normal(jax.random.key(2), (256, 3))
    claim, _ = check_claims(plan, lambda v: old_m.apply(old, v), lambda v: new_m.apply(new, v), x)
    assert claim == "function"


# ----------------------------------------------------------------- 5. the tracer never guesses


def test_a_depthwise_conv_with_a_multiplier_keeps_the_input_space():
    class Depthwise(nn.Module):
        channels: int = 3

        @nn.compact
        def __call__(self, obs):
            x = nn.relu(nn.Conv(2 * self.channels, (3, 3), feature_group_count=self.channels)(obs))
            return nn.Dense(2)(x.reshape(x.shape[0], -1))

    old_m, new_m = Depthwise(3), Depthwise(4)
    x_old, x_new = jnp.ones((2, 5, 5, 3)), jnp.ones((2, 5, 5, 4))
    old = old_m.init(jax.random.key(0), x_old)
    fresh = new_m.init(jax.random.key(1), x_new)
    layout = fs.trace_layout(old_m.apply, old, x_old)
    assert "obs" in fs.layout.spaces_in(layout["params/Conv_0/kernel"][-1])
    plan = fs.plan(old, fresh, layout, new_layout=fs.trace_layout(new_m.apply, fresh, x_new),
                   spaces={"obs": (["r", "g", "b"], ["r", "g", "b", "depth"])})
    new = fs.transplant(old, plan, fresh)
    xs = jax.random.normal(jax.random.key(2), (16, 5, 5, 3))
    report = fs.verify(lambda v: old_m.apply(old, v), lambda v: new_m.apply(new, v), xs, plan, inputs="obs")
    assert plan.preserves() == "function" and report.max_abs_diff <= 1e-5


def test_a_flattened_raw_input_is_not_guessed():
    class Flat(nn.Module):
        @nn.compact
        def __call__(self, obs):
            return nn.Dense(2)(obs.reshape(obs.shape[0], -1))

    x = jnp.ones((2, 4, 4, 3))
    with pytest.raises(ValueError, match="none of which is known to carry units"):
        fs.trace_layout(Flat().apply, Flat().init(jax.random.key(0), x), x)


# ----------------------------------------------------------------- 6. input types


PAIR = ({"w": np.ones((2, 3), np.float32)}, {"w": np.ones((3, 3), np.float32)}, {"w": ("obs", None)})


@pytest.mark.parametrize("spec,expected", [
    ((["a", ["b"]], ["a", ["b"], "c"]), "space 'obs': old IDs must be hashable (str, int, tuple, ...); got list IDs: ['b'] at position 1"),
    ((2.0, 3), "space 'obs': old IDs: expected an int count or a list of unit IDs, got float 2.0"),
    ((None, 3), "space 'obs': old IDs: expected an int count or a list of unit IDs, got None"),
    (("ab", "abc"), "got str 'ab' (list('abc') if each character is an ID)"),
    (({"a", "b"}, 3), "a set has no order"),
    ((np.zeros((2, 1)), 3), "an array of IDs must be 1-D"),
    ((2, 3, 4), "space 'obs': expected (old_ids, new_ids)"),
])
def test_bad_ids_get_a_line_each(spec, expected):
    with pytest.raises(ValueError) as excinfo:
        fs.plan(*PAIR, spaces={"obs": spec})
    assert any(expected in p for p in problems_of(excinfo)), problems_of(excinfo)


@pytest.mark.parametrize("spec", [(jnp.arange(2), jnp.arange(3)), (np.int64(2), np.int32(3)),
                                  (jnp.array(2), 3), ([np.int64(0), jnp.array(1)], range(3))])
def test_array_ids_mean_their_values(spec):
    plan = fs.plan(*PAIR, spaces={"obs": spec})
    np.testing.assert_array_equal(plan.index("obs"), [0, 1, -1])


class BadRepr:
    def __repr__(self):
        raise RuntimeError("no")


def test_arguments_of_the_wrong_type_are_listed():
    with pytest.raises(ValueError) as excinfo:
        fs.plan(*PAIR[:2], [("w", ("obs", None))], spaces=[("obs", (2, 3))], layer_map=["x"],
                preset=["preserving"], drop=[1])
    problems = problems_of(excinfo)
    assert any(p.startswith("layout must be a mapping") for p in problems)
    assert any(p.startswith("spaces must be a mapping") for p in problems)
    assert any(p.startswith("layer_map must be a mapping") for p in problems)
    assert any(p.startswith("unknown preset ['preserving']") for p in problems)
    assert any(p.startswith("drop must be a list of old leaf or layer paths") for p in problems)
    with pytest.raises(ValueError, match="old_tree must be a tree of named arrays"):
        fs.plan(np.ones((2, 3), np.float32), PAIR[1], {"w": ("obs", None)})
    odd = BadRepr()
    with pytest.raises(ValueError) as excinfo:  # an ID whose repr raises still gets its line
        fs.plan(*PAIR, spaces={"obs": ([odd, odd], 3)})
    assert "<BadRepr whose repr fails>" in str(excinfo.value)


def test_abstract_and_wrongly_typed_trees_are_rejected_by_transplant():
    old, new, layout = PAIR
    plan = fs.plan(jax.eval_shape(lambda: old), new, layout)  # a plan from shapes is fine
    with pytest.raises(ValueError, match="old_tree leaf 'w' is abstract"):
        fs.transplant(jax.eval_shape(lambda: old), plan)
    with pytest.raises(ValueError, match="old_tree leaf 'w' has dtype float64, the plan expects float32"):
        fs.transplant({"w": np.ones((2, 3), np.float64)}, plan)
    with pytest.raises(ValueError, match="fresh_tree leaf 'w' has dtype bfloat16"):
        fs.transplant(old, plan, {"w": jnp.ones((3, 3), jnp.bfloat16)})
    with pytest.raises(ValueError, match="dtype float32 but its source 'w' is float16"):
        fs.plan({"w": np.ones((2, 3), np.float16)}, new, layout)


# ----------------------------------------------------------------- 7. linear plan building, 8. read-only


def test_a_large_named_vocabulary_plans_in_one_pass():
    n = 200_000
    old_ids = [f"tok{i}" for i in range(n)]
    new_ids = old_ids[::-1] + ["<new>"]
    old = {"embed": {"embedding": np.zeros((n, 2), np.float32)}}
    new = {"embed": {"embedding": np.zeros((n + 1, 2), np.float32)}}
    plan = fs.plan(old, new, {"embed/embedding": ("vocab", "d")}, spaces={"vocab": (old_ids, new_ids)})
    index = plan.index("vocab")
    assert index[0] == n - 1 and index[-1] == -1


def test_a_plans_arrays_are_read_only():
    old, new, layout = PAIR
    plan = fs.plan(old, new, layout, spaces={"obs": (["a", "b"], ["b", "a", "c"])})
    arrays = jax.tree_util.tree_leaves(plan.arrays)
    assert arrays
    for array in arrays:
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 5


# ----------------------------------------------------------------- the property: claims hold


RULE_CHOICES = {
    "mean+": lambda: fs.mean(offset=0.5), "mean-": lambda: fs.mean(offset=-1e-3), "mean0": fs.mean,
    "mean_policy": lambda: fs.mean(offset=-20.0), "copy-": lambda: fs.copy_of("a0", offset=-0.5),
    "copy+": lambda: fs.copy_of("a0", offset=0.5), "zeros": fs.zeros, "fresh": fs.fresh,
}


@st.composite
def surgery_case(draw):
    return dict(  # noqa: C408 - keyword names read better here
        n_obs=draw(st.integers(1, 3)), add_obs=draw(st.integers(0, 2)),
        hidden=draw(st.integers(2, 6)), add_hidden=draw(st.integers(0, 3)),
        actions=draw(st.integers(1, 3)), add_actions=draw(st.integers(0, 2)),
        out_rule=draw(st.sampled_from(sorted(RULE_CHOICES))), hidden_rule=draw(st.sampled_from(["default", "split", "zeros"])),
        norm=draw(st.sampled_from(["", "layer", "batch"])), out_bias=draw(st.booleans()),
        new_first=draw(st.booleans()), tie=draw(st.booleans()),
        optimizer=draw(st.sampled_from(sorted(OPTIMIZERS))), seed=draw(st.integers(0, 3)),
    )


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=surgery_case())
def test_whatever_the_report_claims_verify_confirms(case, transplant):
    old_m = Net(case["hidden"], case["actions"], case["norm"], case["out_bias"])
    new_m = Net(case["hidden"] + case["add_hidden"], case["actions"] + case["add_actions"], case["norm"], case["out_bias"])
    n_old, n_new = case["n_obs"], case["n_obs"] + case["add_obs"]
    old, fresh = variables(old_m, n_old, case["seed"]), variables(new_m, n_new, case["seed"] + 1)
    if case["tie"]:  # every old Q-value equal: a new action could only lose a tie by its margin
        out = old["params"]["Dense_1"]
        out = {**out, "kernel": jnp.repeat(out["kernel"][:, :1], case["actions"], axis=1)}
        if "bias" in out:
            out["bias"] = jnp.full_like(out["bias"], 0.25)
        old = {**old, "params": {**old["params"], "Dense_1": out}}
    old_actions = [f"a{i}" for i in range(case["actions"])]
    added = [f"n{i}" for i in range(case["add_actions"])]
    new_actions = added + old_actions if case["new_first"] else old_actions + added
    obs_old = [f"o{i}" for i in range(n_old)]
    obs_new = [f"x{i}" for i in range(case["add_obs"])] + obs_old
    rules = {"out": RULE_CHOICES[case["out_rule"]]()}
    if case["hidden_rule"] == "split":
        rules["Dense_0"] = fs.split(0)
    elif case["hidden_rule"] == "zeros":
        rules["Dense_0"] = fs.zeros()
    try:
        plan = fs.plan(old, fresh, traced(old_m, old, n_old), new_layout=traced(new_m, fresh, n_new),
                       spaces={"obs": (obs_old, obs_new), "out": (old_actions, new_actions)}, rules=rules)
    except ValueError:
        return  # raising is always allowed; a wrong claim never is
    new = transplant(old, plan, fresh)
    x = jax.random.normal(jax.random.key(case["seed"] + 7), (128, n_old))
    check_claims(plan, lambda v: old_m.apply(old, v), lambda v: new_m.apply(new, v), x)
    if transplant is not fs.transplant:
        return  # the state's move does not depend on how `transplant` runs: checked in the eager run
    opt = OPTIMIZERS[case["optimizer"]]()
    _, state = trained_state(opt, old["params"], steps=2)
    new_state = fs.transplant_state(state, plan, opt.init(fresh["params"]))
    updates, _ = opt.update(jax.tree_util.tree_map(jnp.ones_like, new["params"]), new_state, new["params"])
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree_util.tree_leaves(updates))


def test_layer_names_with_or_without_the_collection_prefix():
    old_m, new_m = Net(8, 2, norm="batch", depth=1), Net(8, 2, norm="batch", depth=2)
    old, fresh = variables(old_m, 3), variables(new_m, 3, 1)
    layouts = traced(old_m, old, 3), traced(new_m, fresh, 3)
    short = fs.plan(old, fresh, layouts[0], new_layout=layouts[1],
                    layer_map={"Dense_2": "Dense_1", "Dense_1": None})
    full = fs.plan(old, fresh, layouts[0], new_layout=layouts[1],
                   layer_map={"params/Dense_2": "params/Dense_1", "params/Dense_1": None})
    assert [leaf.source for leaf in short.leaves] == [leaf.source for leaf in full.leaves]
    tree = {"params": {"a": {"w": np.ones((2, 2), np.float32)}, "b": {"scale": np.ones(2, np.float32)}},
            "batch_stats": {"b": {"mean": np.zeros(2, np.float32)}}}
    kept = {"params": {"a": tree["params"]["a"]}}
    with pytest.raises(ValueError, match="would be dropped"):
        fs.plan(tree, kept, {})
    plan = fs.plan(tree, kept, {}, drop=["b"])  # both collections' leaves of layer b
    assert [leaf.source for leaf in plan.leaves] == ["params/a/w"]
