"""A Llama-style decoder that grows without forgetting: wider, more heads, deeper, more tokens.

The model: token embedding tied to the output projection, pre-norm blocks (RMSNorm, grouped-query
attention with rotary position embedding, SwiGLU MLP), a final RMSNorm, and a per-token output
bias. Its layout is traced from the forward pass (``fs.trace_layout``); each growth operation is
one ``fs.plan`` + ``fs.transplant`` (the width rule adds one exact step the plan cannot express,
see :func:`grow`).

Run ``python -m experiments.transformer --seeds 3`` for the training comparison: a small model
trained on generated arithmetic strings, grown (wider and one block deeper), trained on, against
the grown architecture trained from scratch and the small model trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxsurgery as fs

# ----------------------------------------------------------------------------------------------
# The model.


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of the decoder. `blocks` names the blocks in order: a name is a block's identity, so
    inserting a block renames none of the others (their weights pair by name, no layer map)."""

    vocab: int = 16
    d_model: int = 32
    mlp_hidden: int = 64
    kv_groups: int = 2
    heads_per_group: int = 2
    head_dim: int = 8
    blocks: tuple = ("b0", "b1")
    output_bias: bool = True


class RMSNorm(nn.Module):
    """x / rms(x) * scale; the mean of squares spans every feature (a MIXING space)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(mean_square + self.eps) * scale


def rotary_tables(length: int, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos and sin of RoPE angles, (length, head_dim), rotate-half pairing (i with i + d/2)."""
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, head_dim, 2) / head_dim))
    angles = jnp.arange(length)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """RoPE on the last axis; `cos`/`sin` broadcast against `x`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Kernel(nn.Module):
    """One weight tensor as its own layer, so that the tracer names its spaces after it."""

    shape: tuple
    std: float

    @nn.compact
    def __call__(self):
        return self.param("kernel", nn.initializers.normal(self.std), self.shape)


class Attention(nn.Module):
    """Causal grouped-query attention with rotary position embedding.

    Query heads are indexed (KV group, head in group), so a group's keys and values meet its
    queries through a batch axis of the score product: no ``repeat`` of keys and values. The
    kernels put the head axes last, where a head's incoming weights are, so new heads start
    with fresh incoming weights and zero outgoing ones. The rotary tables are computed here,
    per block: one table shared by every block would tie all blocks' head dimensions into one
    space of the layout.
    """

    kv_groups: int
    heads_per_group: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        d, h, g, r = x.shape[-1], self.head_dim, self.kv_groups, self.heads_per_group
        wq = Kernel((d, h, g, r), d ** -0.5, name="q")()
        wk = Kernel((d, h, g), d ** -0.5, name="k")()
        wv = Kernel((d, h, g), d ** -0.5, name="v")()
        wo = Kernel((g, r, h, d), (g * r * h) ** -0.5, name="o")()
        length = x.shape[1]
        cos, sin = rotary_tables(length, h)
        q = rotate(jnp.einsum("btd,dhgr->btgrh", x, wq), cos[:, None, None], sin[:, None, None])
        k = rotate(jnp.einsum("btd,dhg->btgh", x, wk), cos[:, None], sin[:, None])
        v = jnp.einsum("btd,dhg->btgh", x, wv)
        scores = jnp.einsum("btgrh,bsgh->bgrts", q, k) / math.sqrt(h)
        causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        heads = jnp.einsum("bgrts,bsgh->btgrh", weights, v)
        return jnp.einsum("btgrh,grhd->btd", heads, wo)


class SwiGLU(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        gate = nn.Dense(self.hidden, use_bias=False, name="gate")(x)
        up = nn.Dense(self.hidden, use_bias=False, name="up")(x)
        return nn.Dense(x.shape[-1], use_bias=False, name="down")(nn.silu(gate) * up)


class Block(nn.Module):
    config: Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        attn = Attention(c.kv_groups, c.heads_per_group, c.head_dim, name="attn")
        x = x + attn(RMSNorm(name="attn_norm")(x))
        return x + SwiGLU(c.mlp_hidden, name="mlp")(RMSNorm(name="mlp_norm")(x))


class Transformer(nn.Module):
    """tokens (batch, time) int -> logits (batch, time, vocab)."""

    config: Config

    @nn.compact
    def __call__(self, tokens):
        c = self.config
        embed = nn.Embed(c.vocab, c.d_model, embedding_init=nn.initializers.normal(c.d_model ** -0.5),
                         name="embed")
        x = embed(tokens)
        for name in c.blocks:
            x = Block(c, name=name)(x)
        logits = embed.attend(RMSNorm(name="final_norm")(x))
        if c.output_bias:  # the one place a new token's logit can be set far below the others
            logits = logits + self.param("bias", nn.initializers.zeros, (c.vocab,))
        return logits


def init(config: Config, key: jax.Array, length: int = 8) -> dict:
    return Transformer(config).init(key, jnp.zeros((2, length), jnp.int32))


def apply_fn(config: Config):
    """`(variables, tokens) -> logits` of a config's model."""
    return Transformer(config).apply


def layout(config: Config, variables=None, length: int = 8) -> dict:
    """The traced layout of a config's model (from shapes only when `variables` is None)."""
    if variables is None:
        variables = jax.eval_shape(lambda: init(config, jax.random.key(0), length))
    return fs.trace_layout(apply_fn(config), variables, jnp.zeros((2, length), jnp.int32),
                           input_names=["tokens"])


# ----------------------------------------------------------------------------------------------
# Growth operations. Space names are the traced layout's: "embed" is d_model (the residual
# stream), "out" the vocabulary, "<block>/mlp/gate" an MLP's hidden units, "<block>/attn/k" the
# KV groups, "<block>/attn/q" the query heads of a group.


@dataclasses.dataclass(frozen=True)
class Growth:
    """One growth step: the new config and the plan's arguments.

    Attributes:
      config: the grown model's config.
      spaces, rules, leaf_inits: passed to ``fs.plan``.
      final_norm_factor: multiplies the final norm's scale after the transplant (see
        :func:`widen`); 1.0 for every other operation.
    """

    config: Config
    spaces: dict = dataclasses.field(default_factory=dict)
    rules: dict = dataclasses.field(default_factory=dict)
    leaf_inits: dict = dataclasses.field(default_factory=dict)
    final_norm_factor: float = 1.0


def duplicated(n: int) -> tuple[list, list, dict]:
    """Old IDs ``0..n-1``, new IDs with one copy ``("copy", i)`` of each, and copy -> original."""
    old = list(range(n))
    copies = [("copy", i) for i in old]
    return old, old + copies, dict(zip(copies, old))


def widen(config: Config, ratio: float = 0.4) -> Growth:
    """d_model and every MLP twice as wide: each old unit duplicated once (HyperCloning-like).

    ``fs.split`` copies a unit's incoming weights and shares its outgoing weights, ``ratio``
    to the copy and ``1 - ratio`` to the original. In the residual stream every writer (the
    embedding's columns, attention and MLP output kernels) is an incoming side, so the stream
    holds each old value twice, ``[x, x]``: its mean square, hence RMSNorm's statistics, is the
    old one exactly, whatever the ratio. Every reader (q/k/v and gate/up kernel rows) takes the
    two halves of a row, so it computes what it did. The one reader the plan cannot split is the
    tied embedding read as the output projection: the embedding's d_model axis is the incoming
    side of the input lookup, so the copies are whole there and the logits would double. Halving
    the final norm's scale (``final_norm_factor=0.5``) makes the logits exact again.

    An MLP's hidden units are element-wise (SwiGLU multiplies gate and up unit by unit), so the
    split is exact there for any ratio too. ``ratio=0.5`` keeps each copy identical to its
    original forever (equal weights, equal gradients); the default 0.4 lets them diverge.
    """
    d_old, d_new, d_source = duplicated(config.d_model)
    spaces = {"embed": (d_old, d_new)}
    rules = {"embed": fs.split(d_source, ratio)}
    for block in config.blocks:
        m_old, m_new, m_source = duplicated(config.mlp_hidden)
        spaces[f"{block}/mlp/gate"] = (m_old, m_new)
        rules[f"{block}/mlp/gate"] = fs.split(m_source, ratio)
    new = dataclasses.replace(config, d_model=2 * config.d_model, mlp_hidden=2 * config.mlp_hidden)
    return Growth(new, spaces, rules, final_norm_factor=0.5)


def more_heads(config: Config, groups: int = 1, heads: int = 1) -> Growth:
    """`groups` more KV groups and `heads` more query heads per group in every block.

    New heads take the preset's rule for hidden units (``fresh_in_zero_out``): fresh incoming
    weights (a new group's key and value columns, a new head's query columns) and zero outgoing
    ones (their rows of the output kernel), so they add exactly 0 to the residual stream. A new
    group's query columns are an outgoing side (the group axis is not the query kernel's last),
    so they start at zero: the group attends uniformly until its output rows move.
    """
    new = dataclasses.replace(config, kv_groups=config.kv_groups + groups,
                              heads_per_group=config.heads_per_group + heads)
    return Growth(new)


def insert_block(config: Config, name: str, after: str) -> Growth:
    """A new pre-norm block after block `after`: fresh reading kernels, zero output kernels.

    ``x + attn(norm(x)) @ 0`` is ``x`` exactly, and so is the MLP's half, so the block is an
    identity whatever its norms and reading kernels hold. The norms start at scale 1 (the
    preset's identity init of a norm); the kernels by ``leaf_inits``.
    """
    if name in config.blocks or after not in config.blocks:
        raise ValueError(f"insert_block: {name!r} must be a new block name and {after!r} one of "
                         f"{config.blocks}")
    blocks = list(config.blocks)
    blocks.insert(blocks.index(after) + 1, name)
    leaf_inits = {f"params/{name}/attn/{k}/kernel": "fresh" for k in "qkv"}
    leaf_inits |= {f"params/{name}/mlp/{k}/kernel": "fresh" for k in ("gate", "up")}
    leaf_inits |= {f"params/{name}/attn/o/kernel": "zeros", f"params/{name}/mlp/down/kernel": "zeros"}
    return Growth(dataclasses.replace(config, blocks=tuple(blocks)), leaf_inits=leaf_inits)


def grow_vocab(config: Config, added: int, offset: float = -20.0) -> Growth:
    """`added` new tokens: embedding rows at the mean of the old rows, output bias at the mean
    of the old biases plus `offset`.

    With tied embeddings a token's row is both its input embedding and its output projection,
    so the mean row gives a new token a logit equal to the mean of the old tokens' logits at
    every position: below the largest, never far below. Only a per-token output bias can push
    it down for every input; ``offset=-20`` puts a new token's probability below ``exp(-20)``
    times the most likely old token's. Without the bias (``output_bias=False``) the greedy token
    is kept but not the sampled distribution.
    """
    new = dataclasses.replace(config, vocab=config.vocab + added)
    return Growth(new, spaces={"out": (config.vocab, new.vocab)},
                  rules={"out": fs.mean(outgoing="mean", offset=offset)})


def grow(config: Config, variables: dict, growth: Growth, key: jax.Array) -> tuple[dict, fs.Plan]:
    """The grown model's variables, and the plan that made them."""
    fresh = init(growth.config, key)
    plan = fs.plan(variables, fresh, layout(config), new_layout=layout(growth.config),
                   spaces=growth.spaces, rules=growth.rules, leaf_inits=growth.leaf_inits)
    grown = fs.transplant(variables, plan, fresh)
    if growth.final_norm_factor != 1.0:
        scale = grown["params"]["final_norm"]["scale"] * growth.final_norm_factor
        grown = {**grown, "params": {**grown["params"],
                                     "final_norm": {**grown["params"]["final_norm"], "scale": scale}}}
    return grown, plan


def verify_growth(config: Config, variables: dict, growth: Growth, grown: dict, plan: fs.Plan,
                  tokens: jax.Array) -> fs.VerifyReport:
    """``fs.verify`` of the grown model against the old one on `tokens` (logits of old tokens)."""
    old = jax.jit(lambda t: apply_fn(config)(variables, t))
    new = jax.jit(lambda t: apply_fn(growth.config)(grown, t))
    return fs.verify(old, new, tokens, plan, outputs="out", x_new=tokens, logits=True)


def moved(config: Config, seed: int = 0, noise: float = 0.3) -> dict:
    """Initial variables with noise on every leaf, so that no norm scale is 1 and no bias 0."""
    variables = init(config, jax.random.key(seed))
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return treedef.unflatten([x + noise * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def measure_growth() -> list[dict]:
    """Each growth operation on SMALL (moved weights), measured on random tokens."""
    tokens = jax.random.randint(jax.random.key(7), (8, LENGTH), 0, SMALL.vocab)
    no_bias = dataclasses.replace(SMALL, output_bias=False)
    cases = [
        ("widen (split 0.4, final norm x0.5)", SMALL, widen(SMALL)),
        ("widen (split 0.5, final norm x0.5)", SMALL, widen(SMALL, 0.5)),
        ("widen without the final norm x0.5", SMALL, dataclasses.replace(widen(SMALL), final_norm_factor=1.0)),
        ("1 KV group + 1 head per group more", SMALL, more_heads(SMALL)),
        ("insert block b0x after b0", SMALL, insert_block(SMALL, "b0x", "b0")),
        ("vocabulary +8 (mean, offset -20)", SMALL, grow_vocab(SMALL, 8)),
        ("vocabulary +8, no output bias", no_bias, grow_vocab(no_bias, 8)),
    ]
    rows = []
    for name, config, growth in cases:
        variables = moved(config)
        grown, plan = grow(config, variables, growth, jax.random.key(99))
        report = verify_growth(config, variables, growth, grown, plan, tokens)
        largest = float(jnp.abs(apply_fn(config)(variables, tokens)).max())
        rows.append({"operation": name, "max_abs_diff": report.max_abs_diff, "max_abs_logit": largest,
                     "greedy_agreement": report.greedy_agreement, "policy_kl": report.policy_kl,
                     "plan_reports": plan.preserves()})
    return rows


# ----------------------------------------------------------------------------------------------
# Training on generated arithmetic strings.

CHARS = "0123456789+=;"  # token i is CHARS[i]; the vocabulary's other tokens never occur
LEARNING_RATE = 3e-3  # chosen on scratch-only runs (--lr-sweep) before any grown run
BATCH, LENGTH, EVAL_EVERY = 32, 32, 25


def corpus(seed: int, problems: int = 20000) -> np.ndarray:
    """`problems` sums ``a+b=c;`` with a, b uniform in 0..99, as one int32 token stream."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 100, problems), rng.integers(0, 100, problems)
    text = "".join(f"{x}+{y}={x + y};" for x, y in zip(a, b))
    return np.array([CHARS.index(ch) for ch in text], np.int32)


def windows(data: jax.Array, key: jax.Array, count: int) -> jax.Array:
    """`count` random windows of ``LENGTH + 1`` tokens."""
    starts = jax.random.randint(key, (count,), 0, data.shape[0] - LENGTH - 1)
    return jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (LENGTH + 1,)))(starts)


@functools.lru_cache(maxsize=8)  # one compilation per architecture and length
def make_train(config: Config, steps: int, learning_rate: float = LEARNING_RATE):
    """``train(variables, key, data, eval_tokens) -> (variables, eval losses)``: Adam from a
    fresh state, one ``lax.scan``; the held-out loss at step 0 and every EVAL_EVERY steps."""
    model = Transformer(config)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))

    def loss(params, tokens):
        logits = model.apply({"params": params}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def train(variables, key, data, eval_tokens):
        def one_step(carry, key):
            params, opt_state = carry
            grads = jax.grad(loss)(params, windows(data, key, BATCH))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def chunk(carry, keys):
            carry, _ = jax.lax.scan(one_step, carry, keys)
            return carry, loss(carry[0], eval_tokens)

        params = variables["params"]
        keys = jax.random.split(key, steps).reshape(steps // EVAL_EVERY, EVAL_EVERY)
        (params, _), losses = jax.lax.scan(chunk, (params, optimizer.init(params)), keys)
        return {"params": params}, jnp.concatenate([loss(variables["params"], eval_tokens)[None], losses])

    return train


SMALL = Config()


def grown_config(config: Config = SMALL) -> Config:
    """The architecture the experiment grows to: twice as wide, one block more."""
    return insert_block(widen(config).config, "b0x", "b0").config


def grow_for_training(config: Config, variables: dict, key: jax.Array) -> dict:
    """Wider (d_model and MLPs doubled), then a block inserted after the first."""
    wide = widen(config)
    variables, _ = grow(config, variables, wide, jax.random.fold_in(key, 0))
    deep = insert_block(wide.config, "b0x", "b0")
    variables, _ = grow(wide.config, variables, deep, jax.random.fold_in(key, 1))
    return variables


def run(seeds: int, steps: int, learning_rate: float = LEARNING_RATE) -> dict:
    """Per seed: the small model trained `steps` steps; then, for `steps` more, (a) it grown and
    trained on, (b) the grown architecture from scratch, (c) the small model trained on. Every
    phase starts a fresh Adam state. Returns held-out losses (seeds, evaluations) per arm."""
    big = grown_config(SMALL)
    data = jnp.asarray(corpus(0))
    eval_tokens = windows(jnp.asarray(corpus(1)), jax.random.key(12345), 256)
    train_small, train_big = make_train(SMALL, steps, learning_rate), make_train(big, steps, learning_rate)
    arms = {"small (phase 1)": [], "grown": [], "scratch": [], "small, trained on": []}
    preserved = []
    for seed in range(seeds):
        key = jax.random.key(seed)
        small, curve = train_small(init(SMALL, jax.random.fold_in(key, 1)), jax.random.fold_in(key, 2),
                                   data, eval_tokens)
        arms["small (phase 1)"].append(curve)
        grown = grow_for_training(SMALL, small, jax.random.fold_in(key, 3))
        phase2 = jax.random.fold_in(key, 4)  # the same batches for every phase-2 arm of a seed
        _, grown_curve = train_big(grown, phase2, data, eval_tokens)
        _, scratch_curve = train_big(init(big, jax.random.fold_in(key, 5)), phase2, data, eval_tokens)
        _, small_curve = train_small(small, phase2, data, eval_tokens)
        arms["grown"].append(grown_curve)
        arms["scratch"].append(scratch_curve)
        arms["small, trained on"].append(small_curve)
        preserved.append(abs(float(grown_curve[0]) - float(curve[-1])))
    return {name: np.asarray(curves) for name, curves in arms.items()}, preserved


def summarise(arms: dict, preserved: list, steps: int, seeds: int, wall_s: float) -> dict:
    """Mean curves with 95% intervals, and the grown arm's paired differences (by seed)."""
    from experiments.results import ci95, paired_difference

    evals = [EVAL_EVERY * i for i in range(steps // EVAL_EVERY + 1)]
    summary = {
        "experiment": "transformer_growth",
        "seeds": seeds, "steps_per_phase": steps, "wall_s": wall_s,
        "config": {"small": dataclasses.asdict(SMALL), "grown": dataclasses.asdict(grown_config()),
                   "learning_rate": LEARNING_RATE, "batch": BATCH, "length": LENGTH,
                   "growth": "widen (d_model 32->64, MLP 64->128, split ratio 0.4, final norm "
                             "scale x0.5), then insert block b0x after b0 (zero output kernels)"},
        "eval_steps": evals,
        "max_loss_change_at_growth": float(max(preserved)),
        "arms": {},
    }
    for name, curves in arms.items():
        summary["arms"][name] = {"mean": curves.mean(0).tolist(), "ci95": ci95(curves).tolist()
                                 if seeds > 1 else None, "final": float(curves[:, -1].mean())}
    if seeds > 1:
        for name in ("scratch", "small, trained on"):
            summary[f"grown minus {name}"] = paired_difference(arms["grown"], arms[name])
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(summary["eval_steps"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    shifted = {"small (phase 1)": -steps[-1]}
    for name, arm in summary["arms"].items():
        x = steps + shifted.get(name, 0)
        mean = np.asarray(arm["mean"])
        ax.plot(x, mean, label=name)
        if arm["ci95"] is not None:
            half = np.asarray(arm["ci95"])
            ax.fill_between(x, mean - half, mean + half, alpha=0.2)
    ax.axvline(0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("training steps (0 = growth; before 0 the small model)")
    ax.set_ylabel("held-out loss (nats / token)")
    ax.set_ylim(top=min(2.4, ax.get_ylim()[1]))
    ax.set_title(f"grow a trained decoder vs. train the grown one from scratch "
                 f"({summary['seeds']} seeds, 95% CI)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lr_sweep(steps: int) -> None:
    """Scratch-only runs (no grown arm) that fixed LEARNING_RATE."""
    data = jnp.asarray(corpus(0))
    eval_tokens = windows(jnp.asarray(corpus(1)), jax.random.key(12345), 256)
    for config in (SMALL, grown_config()):
        for lr in (1e-3, 3e-3, 1e-2):
            _, curve = make_train(config, steps, lr)(init(config, jax.random.key(0)), jax.random.key(1),
                                                      data, eval_tokens)
            print(f"d_model {config.d_model} blocks {len(config.blocks)} lr {lr:g}: final held-out "
                  f"loss {float(curve[-1]):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400, help="steps per phase (a multiple of "
                        f"{EVAL_EVERY})")
    parser.add_argument("--out", default="results/transformer_growth")
    parser.add_argument("--lr-sweep", action="store_true", help="only the scratch runs that "
                        "chose the learning rate")
    parser.add_argument("--measure", action="store_true", help="only each growth operation's "
                        "measured output difference")
    args = parser.parse_args()
    if args.steps % EVAL_EVERY:
        raise ValueError(f"--steps must be a multiple of {EVAL_EVERY}, got {args.steps}")
    if args.lr_sweep:
        lr_sweep(args.steps)
        return
    if args.measure:
        print("| operation | max abs logit diff | max abs logit | greedy agreement | policy KL | plan reports |")
        print("|---|---|---|---|---|---|")
        for r in measure_growth():
            print(f"| {r['operation']} | {r['max_abs_diff']:.2e} | {r['max_abs_logit']:.1f} | "
                  f"{r['greedy_agreement']:.3f} | {r['policy_kl']:.1e} | {r['plan_reports']} |")
        return
    start = time.perf_counter()
    arms, preserved = run(args.seeds, args.steps)
    summary = summarise(arms, preserved, args.steps, args.seeds, time.perf_counter() - start)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "curves.png")
    for name, arm in summary["arms"].items():
        print(f"{name:>20}: loss {arm['mean'][0]:.3f} -> {arm['final']:.3f}")
    for name in ("scratch", "small, trained on"):
        if f"grown minus {name}" in summary:
            print(f"grown minus {name}: {summary[f'grown minus {name}']}")
    print(f"loss change at growth (max over seeds): {summary['max_loss_change_at_growth']:.2e}; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
