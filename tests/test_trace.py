"""trace_layout: traced layouts against hand-written ones, and transplants through them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxsurgery as fs
from flaxsurgery.layout import ACTIVATIONS, MIXING, OUTPUTS, WINDOW
from flaxsurgery.rules import GREEDY_MARGIN
from flaxsurgery.trace import Concat, Flat, trace_layout
from tests.conftest import MLP

KEY, FRESH_KEY = jax.random.key(0), jax.random.key(1)



def without_outputs(layout: dict) -> dict:
    """A traced layout without its OUTPUTS and ACTIVATIONS keys (tested on their own)."""
    return {k: v for k, v in layout.items() if k is not OUTPUTS and k is not ACTIVATIONS}

def sample(*shape, seed=0):
    return jax.random.normal(jax.random.key(100 + seed), shape)


def traced_transplant(old_model, new_model, old_inputs, new_inputs, spaces=None, **plan_kw):
    """Old variables, transplanted new variables and the plan, all through traced layouts."""
    old_vars = old_model.init(KEY, *old_inputs)
    new_shapes = jax.eval_shape(new_model.init, FRESH_KEY, *new_inputs)
    layout = trace_layout(old_model.apply, old_vars, *old_inputs)
    new_layout = trace_layout(new_model.apply, new_shapes, *new_inputs)
    plan = fs.plan(old_vars, new_shapes, layout, new_layout=new_layout, spaces=spaces, **plan_kw)
    new_vars = fs.transplant(old_vars, plan, new_model.init(FRESH_KEY, *new_inputs))
    return old_vars, new_vars, plan


# ------------------------------------------------------------------------------------ models


class CNN(nn.Module):
    channels: int = 4

    @nn.compact
    def __call__(self, obs):
        x = nn.relu(nn.Conv(self.channels, (3, 3))(obs))
        x = x.reshape((x.shape[0], -1))  # NHWC flatten: channels fastest
        x = nn.relu(nn.Dense(5)(x))
        return nn.Dense(2)(x)


class Residual(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, obs):
        h = nn.Dense(self.width)(obs)
        h = h + nn.Dense(self.width)(nn.relu(h))  # the skip couples both layers' outputs
        return nn.Dense(2)(nn.relu(h))


class TwoInputs(nn.Module):
    @nn.compact
    def __call__(self, pos, vel):
        x = nn.relu(nn.Dense(8, name="body")(jnp.concatenate([pos, vel], axis=-1)))
        return nn.Dense(2, name="head")(x)


class Attention(nn.Module):
    heads: int = 2

    @nn.compact
    def __call__(self, x):
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=4 * self.heads,
                                            name="mha")(x)
        return nn.Dense(3, name="head")(y.mean(axis=1))


class Recurrent(nn.Module):
    hidden: int = 5
    cell: type = nn.LSTMCell

    @nn.compact
    def __call__(self, xs):
        hs = nn.RNN(self.cell(self.hidden), name="rnn")(xs)
        return nn.Dense(2, name="head")(hs[:, -1])


class Dueling(nn.Module):
    actions: int = 3

    @nn.compact
    def __call__(self, obs):
        h = nn.relu(nn.Dense(8, name="torso")(obs))
        value = nn.Dense(1, name="value")(h)
        adv = nn.Dense(self.actions, name="adv")(h)
        return value + adv - adv.mean(axis=-1, keepdims=True)


def abstract(model, *inputs):
    return jax.eval_shape(model.init, KEY, *inputs)


# ------------------------------------------------------------------------------------ MLP


def test_mlp_layout_is_the_chain_layout():
    x = sample(4, 3)
    layout = trace_layout(MLP().apply, abstract(MLP(), x), x)
    assert without_outputs(layout) == fs.chain_layout(["obs", "Dense_0", "Dense_1", "out"],
                                     ["Dense_0", "Dense_1", "Dense_2"])


def test_mlp_input_added_and_hidden_widened_keep_the_function():
    x_old = sample(6, 3)
    x_new = jnp.insert(x_old, 1, sample(6, seed=1), axis=1)  # any value in the new feature
    old, new, _ = traced_transplant(
        MLP((8, 8, 2)), MLP((12, 8, 2)), [x_old], [x_new],
        spaces={"obs": (["x", "v", "theta"], ["x", "new", "v", "theta"])},
    )
    np.testing.assert_allclose(MLP((12, 8, 2)).apply(new, x_new), MLP().apply(old, x_old),
                               atol=1e-5)


def test_jitted_apply_traces_through_the_jit():
    x = sample(4, 3)
    variables = abstract(MLP(), x)
    assert trace_layout(jax.jit(MLP().apply), variables, x, input_names=["obs"]) == trace_layout(
        MLP().apply, variables, x)


# ------------------------------------------------------------------------------------ CNN


def test_cnn_flatten_layout_uses_flat_with_channels_fastest():
    x = sample(2, 5, 5, 3)
    layout = trace_layout(CNN().apply, abstract(CNN(), x), x)
    assert without_outputs(layout) == {
        "params/Conv_0/kernel": (WINDOW, WINDOW, "obs", "Conv_0"),
        "params/Conv_0/bias": ("Conv_0",),
        "params/Dense_0/kernel": (Flat("Conv_0", 25), "Dense_0"),
        "params/Dense_0/bias": ("Dense_0",),
        "params/Dense_1/kernel": ("Dense_0", "out"),
        "params/Dense_1/bias": ("out",),
    }


def test_cnn_channel_permutation_moves_exactly_the_right_dense_rows():
    x = sample(2, 5, 5, 3)
    perm = [2, 0, 3, 1]
    old, new, _ = traced_transplant(CNN(), CNN(), [x], [x],
                                    spaces={"Conv_0": ([0, 1, 2, 3], perm)})
    old_rows = np.asarray(old["params"]["Dense_0"]["kernel"])
    new_rows = np.asarray(new["params"]["Dense_0"]["kernel"])
    for position in range(25):
        for c, source in enumerate(perm):  # channel c of the new net is old channel perm[c]
            np.testing.assert_array_equal(new_rows[position * 4 + c], old_rows[position * 4 + source])
    np.testing.assert_allclose(CNN().apply(new, x), CNN().apply(old, x), atol=1e-5)


def test_cnn_widened_channels_keep_the_function():
    x = sample(2, 5, 5, 3)
    old, new, _ = traced_transplant(CNN(4), CNN(6), [x], [x])
    np.testing.assert_allclose(CNN(6).apply(new, x), CNN(4).apply(old, x), atol=1e-5)


def test_depthwise_and_grouped_convs():
    class Grouped(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3))(x)
            x = nn.Conv(4, (3, 3), feature_group_count=4)(x)  # depthwise: same channels
            return nn.Conv(6, (1, 1), feature_group_count=2)(x)  # 2 groups of 2 -> 2 of 3

    x = sample(2, 4, 4, 3)
    layout = trace_layout(Grouped().apply, abstract(Grouped(), x), x)
    # Grouped channels are group * per_group + unit: the groups are positions, as in a flatten.
    assert layout["params/Conv_0/kernel"] == (WINDOW, WINDOW, "x", Flat("Conv_0.1", 2))
    assert layout["params/Conv_1/kernel"] == (WINDOW, WINDOW, None, Flat("Conv_0.1", 2))
    assert layout["params/Conv_2/kernel"] == (WINDOW, WINDOW, "Conv_0.1", Flat("out.1", 2))


# ------------------------------------------------------------------------------------ residual


def test_residual_block_couples_its_spaces():
    x = sample(4, 3)
    layout = trace_layout(Residual().apply, abstract(Residual(), x), x)
    assert without_outputs(layout) == {
        "params/Dense_0/kernel": ("obs", "Dense_0"),
        "params/Dense_0/bias": ("Dense_0",),
        "params/Dense_1/kernel": ("Dense_0", "Dense_0"),
        "params/Dense_1/bias": ("Dense_0",),
        "params/Dense_2/kernel": ("Dense_0", "out"),
        "params/Dense_2/bias": ("out",),
    }


def test_residual_block_widened_together_keeps_the_function():
    x = sample(6, 3)
    old, new, plan = traced_transplant(Residual(8), Residual(11), [x], [x])
    assert new["params"]["Dense_1"]["kernel"].shape == (11, 11)
    np.testing.assert_array_equal(plan.index("Dense_0"), [0, 1, 2, 3, 4, 5, 6, 7, -1, -1, -1])
    np.testing.assert_allclose(Residual(11).apply(new, x), Residual(8).apply(old, x), atol=1e-5)


# ------------------------------------------------------------------------------------ concat


def test_two_inputs_concatenated_are_segments_of_one_axis():
    pos, vel = sample(4, 3), sample(4, 2, seed=1)
    layout = trace_layout(TwoInputs().apply, abstract(TwoInputs(), pos, vel), pos, vel)
    assert layout["params/body/kernel"] == (Concat(("pos", "vel")), "body")
    assert layout["params/head/kernel"] == ("body", "out")


def test_a_feature_added_to_one_concatenated_input():
    pos, vel = sample(6, 3), sample(6, 2, seed=1)
    pos_new = jnp.concatenate([pos, sample(6, 1, seed=2)], axis=1)
    spaces = {"pos": (["x", "y", "z"], ["x", "y", "z", "w"])}
    old, new, _ = traced_transplant(TwoInputs(), TwoInputs(), [pos, vel], [pos_new, vel],
                                    spaces=spaces)
    kernel_old, kernel_new = old["params"]["body"]["kernel"], new["params"]["body"]["kernel"]
    np.testing.assert_array_equal(kernel_new[:3], kernel_old[:3])
    np.testing.assert_array_equal(kernel_new[4:], kernel_old[3:])  # vel's rows moved down one
    np.testing.assert_allclose(TwoInputs().apply(new, pos_new, vel),
                               TwoInputs().apply(old, pos, vel), atol=1e-5)


def test_split_then_concatenate_gives_segment_spaces():
    class Halves(nn.Module):
        @nn.compact
        def __call__(self, obs):
            h = nn.Dense(6)(obs)
            a, b = jnp.split(h, [2], axis=-1)
            return nn.Dense(2)(jnp.concatenate([b, jnp.tanh(a)], axis=-1))

    x = sample(4, 3)
    layout = trace_layout(Halves().apply, abstract(Halves(), x), x)
    assert layout["params/Dense_1/kernel"] == (Concat(("Dense_0[2:6]", "Dense_0[0:2]")), "out")
    assert layout["params/Dense_0/kernel"] == ("obs", Concat(("Dense_0[0:2]", "Dense_0[2:6]")))


# ------------------------------------------------------------------------------------ attention


def test_attention_heads_are_a_space():
    x = sample(3, 5, 6)
    layout = trace_layout(Attention().apply, abstract(Attention(), x), x)
    heads, qk, v = "mha/query:1", "mha/query", "mha/value"
    assert without_outputs(layout) == {
        "params/mha/query/kernel": ("x", heads, qk),
        "params/mha/query/bias": (heads, qk),
        "params/mha/key/kernel": ("x", heads, qk),
        "params/mha/key/bias": (heads, qk),
        "params/mha/value/kernel": ("x", heads, v),
        "params/mha/value/bias": (heads, v),
        "params/mha/out/kernel": (heads, v, "mha/out"),
        "params/mha/out/bias": ("mha/out",),
        "params/head/kernel": ("mha/out", "out"),
        "params/head/bias": ("out",),
        MIXING: (qk,),  # queries and keys meet in a product: their features mix
    }


def test_attention_heads_permuted_and_added():
    x = sample(3, 5, 6)
    old, new, _ = traced_transplant(Attention(2), Attention(2), [x], [x],
                                    spaces={"mha/query:1": ([0, 1], [1, 0])})
    np.testing.assert_allclose(Attention(2).apply(new, x), Attention(2).apply(old, x), atol=1e-5)
    old, new, _ = traced_transplant(Attention(2), Attention(3), [x], [x])
    np.testing.assert_allclose(Attention(3).apply(new, x), Attention(2).apply(old, x), atol=1e-5)


# ------------------------------------------------------------------------------------ recurrent


def test_lstm_gates_share_the_hidden_space():
    xs = sample(2, 4, 3)
    layout = trace_layout(Recurrent().apply, abstract(Recurrent(), xs), xs)
    cell = "params/LSTMCell_0"
    hidden = "LSTMCell_0/hi"  # the first layer in forward order that outputs it
    expected = {"params/head/kernel": (hidden, "out"), "params/head/bias": ("out",)}
    for gate in "ifgo":
        expected[f"{cell}/i{gate}/kernel"] = ("xs", hidden)
        expected[f"{cell}/h{gate}/kernel"] = (hidden, hidden)
        expected[f"{cell}/h{gate}/bias"] = (hidden,)
    assert without_outputs(layout) == expected


@pytest.mark.parametrize("cell", [nn.LSTMCell, nn.GRUCell])
def test_recurrent_hidden_widened_keeps_the_function(cell):
    xs = sample(3, 4, 3)
    old, new, _ = traced_transplant(Recurrent(5, cell), Recurrent(7, cell), [xs], [xs])
    np.testing.assert_allclose(Recurrent(7, cell).apply(new, xs), Recurrent(5, cell).apply(old, xs),
                               atol=1e-5)


def test_gru_cell_alone_names_its_hidden_space_after_the_carry():
    cell, x = nn.GRUCell(5), sample(3, 4)
    carry = sample(3, 5, seed=1)
    layout = trace_layout(cell.apply, abstract(cell, carry, x), carry, x)
    assert layout["params/hn/kernel"] == ("carry", "carry")
    assert layout["params/ir/kernel"] == ("inputs", "carry")


# ------------------------------------------------------------------------------------ dueling


def test_dueling_head_layout_and_new_action_keeps_old_q_values():
    x = sample(6, 3)
    layout = trace_layout(Dueling().apply, abstract(Dueling(), x), x)
    assert layout["params/value/kernel"] == ("torso", "value")
    assert layout["params/adv/kernel"] == ("torso", "out")
    spaces = {"out": (["l", "r", "s"], ["l", "r", "s", "jump"])}
    # The plain mean keeps mean(A), so the old actions' Q-values are exact.
    old, new, _ = traced_transplant(Dueling(3), Dueling(4), [x], [x], spaces=spaces,
                                    rules={"out": fs.mean()})
    q_old, q_new = Dueling(3).apply(old, x), Dueling(4).apply(new, x)
    np.testing.assert_allclose(q_new[:, :3], q_old, atol=1e-5)
    # The preset's margin lowers mean(A) by margin / 4: every Q-value shifts alike, and the new
    # action stays below the best old one.
    _, kept, _ = traced_transplant(Dueling(3), Dueling(4), [x], [x], spaces=spaces)
    q_kept = Dueling(4).apply(kept, x)
    np.testing.assert_allclose(q_kept[:, :3], q_old + GREEDY_MARGIN / 4, atol=1e-5)
    np.testing.assert_array_equal(q_kept.argmax(-1), q_old.argmax(-1))


# ------------------------------------------------------------------------------------ NNX


class NnxNet(nnx.Module):
    def __init__(self, width, rngs):
        self.l0 = nnx.Linear(3, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, use_running_average=True, rngs=rngs)
        self.l1 = nnx.Linear(width, 2, rngs=rngs)

    def __call__(self, obs):
        return self.l1(nnx.relu(self.norm(self.l0(obs))))


def test_nnx_module_layout():
    layout = trace_layout(NnxNet(8, nnx.Rngs(0)), sample(4, 3))
    norm = {f"norm/{leaf}": ("l0",) for leaf in ("scale", "bias", "mean", "var")}
    assert without_outputs(layout) == {"l0/kernel": ("obs", "l0"), "l0/bias": ("l0",), **norm,
                      "l1/kernel": ("l0", "out"), "l1/bias": ("out",)}


def test_nnx_widened_keeps_the_function():
    x = sample(6, 3)
    old_model, new_model = NnxNet(8, nnx.Rngs(0)), NnxNet(12, nnx.Rngs(1))
    old_state, new_state = nnx.state(old_model), nnx.state(new_model)
    plan = fs.plan(old_state, new_state, trace_layout(old_model, x),
                   new_layout=trace_layout(new_model, x))
    nnx.update(new_model, fs.transplant(old_state, plan, new_state))
    np.testing.assert_allclose(new_model(x), old_model(x), atol=1e-5)


# ------------------------------------------------------------------------------------ names


def test_pytree_inputs_and_input_names():
    def apply(params, obs):
        return jnp.tanh(obs["pos"] @ params["a"]) @ params["b"] + obs["vel"] @ params["c"]

    params = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((4, 2)), "c": jnp.zeros((2, 2))}
    obs = {"pos": sample(5, 3), "vel": sample(5, 2)}
    assert without_outputs(trace_layout(apply, params, obs)) == {
        "a": ("obs/pos", "a"), "b": ("a", "out"), "c": ("obs/vel", "out")}
    assert trace_layout(apply, params, obs, input_names=["o"])["c"] == ("o/vel", "out")


# ------------------------------------------------------------------------------------ errors


def test_unsupported_primitive_is_named_with_its_place():
    class Sorted(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.sort(nn.Dense(4)(x), axis=-1)
            return nn.Dense(2)(h)

    x = sample(4, 3)
    with pytest.raises(ValueError, match=r"unsupported primitive `sort` in Sorted"):
        trace_layout(Sorted().apply, abstract(Sorted(), x), x)


@pytest.mark.parametrize("mix", ["regroup", "pool_channels", "strided"])
def test_unit_mixing_fails_instead_of_a_wrong_layout(mix):
    class Mixer(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(6)(x)
            if mix == "regroup":
                h = h.reshape(h.shape[0], 2, 3).reshape(h.shape[0], 3, 2).reshape(h.shape[0], 6)
            elif mix == "pool_channels":
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2), (1, 2), "VALID")
            else:
                h = h[:, ::2]
            return nn.Dense(2)(h)

    x = sample(4, 3)
    with pytest.raises(ValueError, match="carries units|none of which is known to carry units"):
        trace_layout(Mixer().apply, abstract(Mixer(), x), x)


def test_reshape_of_unit_free_axes_is_allowed():
    def apply(params, xs):  # (B, T, D) -> (B*T, D) -> dense -> (B, T, 2)
        b, t, d = xs.shape
        return (xs.reshape(b * t, d) @ params["w"]).reshape(b, t, 2)

    assert without_outputs(trace_layout(apply, {"w": jnp.zeros((3, 2))}, sample(4, 5, 3))) == {"w": ("xs", "out")}


def test_unused_variables_are_reported():
    x = sample(4, 3)
    variables = abstract(MLP(), x)
    variables = {"params": {**variables["params"], "extra": {"kernel": jnp.zeros((3, 3))}}}
    with pytest.raises(ValueError, match="never reads 'params/extra/kernel'"):
        trace_layout(MLP().apply, variables, x)


def test_outputs_lists_the_spaces_the_model_returns():
    class TwoHeads(nn.Module):
        @nn.compact
        def __call__(self, obs):
            h = nn.relu(nn.Dense(4)(obs))
            return nn.Dense(3)(h), nn.Dense(1)(h)[..., 0]  # logits, and a squeezed value

    x = sample(4, 2)
    layout = trace_layout(TwoHeads().apply, abstract(TwoHeads(), x), x)
    assert layout[OUTPUTS] == ("out/0",)  # the squeezed value carries no unit axis
