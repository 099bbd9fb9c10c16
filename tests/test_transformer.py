"""The growing decoder of experiments/transformer.py: its traced layout, and each growth
operation's measured output difference against what the plan reports."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flaxsurgery as fs
from experiments import transformer as tr

TINY = tr.Config(vocab=12, d_model=16, mlp_hidden=24, kv_groups=2, heads_per_group=2, head_dim=4)
EXACT = 1e-5  # float32: a regrouped sum differs from the original in its last bits


def perturbed(config, seed=0):
    """Initial variables with every leaf moved off its init (norm scales != 1, bias != 0)."""
    variables = tr.init(config, jax.random.key(seed))
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return treedef.unflatten([x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(7), (3, 10), 0, TINY.vocab)


def measured(config, growth, tokens, seed=0):
    """(verify report, plan, grown variables); the report's max_abs_diff is divided by the
    largest old logit's magnitude (about 6 here), so EXACT bounds the float32 rounding of a
    regrouped sum relative to the logits' scale."""
    variables = perturbed(config, seed)
    grown, plan = tr.grow(config, variables, growth, jax.random.key(99))
    report = tr.verify_growth(config, variables, growth, grown, plan, tokens)
    scale = max(1.0, float(jnp.abs(tr.apply_fn(config)(variables, tokens)).max()))
    return report._replace(max_abs_diff=report.max_abs_diff / scale), plan, grown


def preserves(plan):
    return {s.name: s.preserves for s in plan.spaces}


def test_traced_layout_names_the_key_spaces():
    layout = tr.layout(TINY)
    pair = "b0/attn/q:1[0:2]"  # rotate-half pairs head-dim unit i with unit i + head_dim / 2
    assert layout["params/embed/embedding"] == ("out", "embed")
    assert layout["params/bias"] == ("out",)
    assert layout["params/final_norm/scale"] == ("embed",)
    assert layout["params/b0/attn/q/kernel"] == ("embed", fs.Concat((pair, pair)), "b0/attn/k", "b0/attn/q")
    assert layout["params/b0/attn/k/kernel"] == ("embed", fs.Concat((pair, pair)), "b0/attn/k")
    assert layout["params/b0/attn/v/kernel"] == ("embed", "b0/attn/v:1", "b0/attn/k")
    assert layout["params/b0/attn/o/kernel"] == ("b0/attn/k", "b0/attn/q", "b0/attn/v:1", "embed")
    assert layout["params/b1/mlp/gate/kernel"] == ("embed", "b1/mlp/gate")
    assert layout["params/b1/mlp/up/kernel"] == ("embed", "b1/mlp/gate")
    assert layout["params/b1/mlp/down/kernel"] == ("b1/mlp/gate", "embed")
    # RMSNorm's statistics mix d_model; q.k mixes the head dimension; heads and MLP units are not mixed.
    assert set(layout[fs.MIXING]) == {"embed", pair, "b1/attn/q:1[0:2]"}


@pytest.mark.parametrize("ratio", [0.4, 0.5])
def test_widen_is_exact_and_the_report_underclaims_only_the_normalised_stream(tokens, ratio):
    growth = tr.widen(TINY, ratio)
    report, plan, grown = measured(TINY, growth, tokens)
    assert report.max_abs_diff <= EXACT
    assert grown["params"]["embed"]["embedding"].shape == (TINY.vocab, 2 * TINY.d_model)
    spaces = {s.name: s for s in plan.spaces}
    assert spaces["b0/mlp/gate"].preserves == "function"  # Net2Net split of element-wise units
    assert spaces["embed"].preserves == "none" and "mixes" in spaces["embed"].why  # exact, but mixed


def test_widen_without_halving_the_final_norm_doubles_the_logits_and_claims_nothing(tokens):
    growth = dataclasses.replace(tr.widen(TINY), final_norm_factor=1.0)
    report, plan, _ = measured(TINY, growth, tokens)
    variables = perturbed(TINY)
    old = tr.apply_fn(TINY)(variables, tokens)
    grown, _ = tr.grow(TINY, variables, growth, jax.random.key(99))
    new = tr.apply_fn(growth.config)(grown, tokens)
    bias = variables["params"]["bias"]
    np.testing.assert_allclose(new - bias, 2 * (old - bias), atol=1e-4)  # the tied read doubles
    assert report.max_abs_diff > 0.01
    assert plan.preserves() == "none"


def test_more_heads_and_kv_groups_are_exact_and_reported_so(tokens):
    growth = tr.more_heads(TINY, groups=1, heads=2)
    report, plan, grown = measured(TINY, growth, tokens)
    assert grown["params"]["b1"]["attn"]["q"]["kernel"].shape == (16, 4, 3, 4)
    assert report.max_abs_diff <= EXACT
    for block in TINY.blocks:
        assert preserves(plan)[f"{block}/attn/k"] == "function"
        assert preserves(plan)[f"{block}/attn/q"] == "function"
    assert plan.preserves() == "function"
    new_rows = grown["params"]["b0"]["attn"]["o"]["kernel"][2:]
    assert not np.asarray(new_rows).any()  # zero outgoing weights: why it is exact


def test_inserted_block_is_an_exact_identity(tokens):
    growth = tr.insert_block(TINY, "b0x", "b0")
    report, plan, grown = measured(TINY, growth, tokens)
    assert growth.config.blocks == ("b0", "b0x", "b1")
    assert report.max_abs_diff <= EXACT
    # The reading kernels are fresh: the plan cannot see that the zero output kernels make the
    # block an identity, so it claims nothing for the new layers.
    inits = {layer: (init, exact) for layer, init, exact in plan.layer_inits}
    assert inits["params/b0x/attn/o"] == ("zeros", "none")
    assert inits["params/b0x/attn/q"] == ("fresh", "none")
    assert np.asarray(grown["params"]["b0x"]["attn"]["q"]["kernel"]).std() > 0


def test_larger_vocabulary_keeps_old_logits_and_puts_new_tokens_far_below(tokens):
    growth = tr.grow_vocab(TINY, 4, offset=-20.0)
    report, plan, grown = measured(TINY, growth, tokens)
    assert report.max_abs_diff <= EXACT
    assert report.policy_kl < 1e-6
    logits = tr.apply_fn(growth.config)(grown, tokens)
    old, new = logits[..., :TINY.vocab], logits[..., TINY.vocab:]
    np.testing.assert_allclose(new, jnp.broadcast_to(old.mean(-1, keepdims=True) - 20.0, new.shape), atol=1e-4)
    assert preserves(plan)["out"] == "none"  # an underclaim: the role is hidden (tied embedding)


def test_larger_vocabulary_without_output_bias_keeps_only_the_greedy_token(tokens):
    config = dataclasses.replace(TINY, output_bias=False)
    growth = tr.grow_vocab(config, 4)
    report, plan, grown = measured(config, growth, tokens)
    logits = tr.apply_fn(growth.config)(grown, tokens)
    old, new = logits[..., :config.vocab], logits[..., config.vocab:]
    np.testing.assert_allclose(new, jnp.broadcast_to(old.mean(-1, keepdims=True), new.shape), atol=1e-4)
    assert report.max_abs_diff <= EXACT and report.greedy_agreement == 1.0
    assert report.policy_kl > 1e-3  # the sampled distribution changes: nothing claimed
    assert plan.preserves() == "none"


def test_training_runs_on_the_grown_model_from_the_small_ones_loss():
    """The experiment's growth (wider, one block deeper) and 25 training steps after it."""
    config = dataclasses.replace(TINY, vocab=len(tr.CHARS))
    data = jnp.asarray(tr.corpus(0, problems=200))
    eval_tokens = tr.windows(data, jax.random.key(1), 4)
    small = perturbed(config)
    logits = tr.apply_fn(config)(small, eval_tokens[:, :-1])
    small_loss = optax.softmax_cross_entropy_with_integer_labels(logits, eval_tokens[:, 1:]).mean()
    grown = tr.grow_for_training(config, small, jax.random.key(3))
    big = tr.grown_config(config)
    _, grown_curve = tr.make_train(big, tr.EVAL_EVERY)(grown, jax.random.key(4), data, eval_tokens)
    assert abs(float(grown_curve[0]) - float(small_loss)) <= EXACT * float(small_loss)
    assert np.isfinite(np.asarray(grown_curve)).all() and grown_curve[-1] < grown_curve[0]


class NegatedTied(nn.Module):
    """The smallest tied-embedding model: logits = -embedding(tokens) @ embedding.T."""

    vocab: int

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(self.vocab, 4)
        return embed.attend(-embed(tokens))


def test_report_never_claims_function_when_a_new_tied_token_takes_the_argmax():
    tokens = jnp.array([[0, 1, 2]])
    embedding = jnp.array([[1.0, 0, 0, -2], [0, 1, 0, -2], [0, 0, 1, -2]])
    old = {"params": {"Embed_0": {"embedding": embedding}}}  # every old logit is negative
    new_shapes = jax.eval_shape(NegatedTied(4).init, jax.random.key(0), tokens)
    plan = fs.plan(old, new_shapes, fs.trace_layout(NegatedTied(3).apply, old, tokens))
    new = fs.transplant(old, plan)
    report = fs.verify(lambda t: NegatedTied(3).apply(old, t), lambda t: NegatedTied(4).apply(new, t),
                       tokens, plan, outputs="out", x_new=tokens)
    assert report.greedy_agreement == 0.0  # the new token's logit 0 beats every old one
    assert plan.preserves() != "function"


@pytest.mark.parametrize("ratio, identical", [(0.5, True), (0.4, False)])
def test_split_copies_stay_identical_under_training_only_with_equal_shares(ratio, identical):
    config = dataclasses.replace(TINY, vocab=len(tr.CHARS))
    growth = tr.widen(config, ratio)
    grown, _ = tr.grow(config, tr.init(config, jax.random.key(0)), growth, jax.random.key(1))
    data = jnp.asarray(tr.corpus(0, problems=200))
    trained, _ = tr.make_train(growth.config, tr.EVAL_EVERY)(grown, jax.random.key(2), data,
                                                           tr.windows(data, jax.random.key(3), 2))
    embedding = np.asarray(trained["params"]["embed"]["embedding"])
    d = config.d_model
    gap = np.abs(embedding[:, :d] - embedding[:, d:]).max()  # each unit against its copy
    assert (gap < 1e-6) if identical else (gap > 1e-3)
