"""A conv transplant across output classes: a CNN trained on digits 0-3 becomes a 4-9 classifier.

The handwritten digits are scikit-learn's own (``sklearn.datasets.load_digits``: 1,797 images of
8x8 pixels, shipped inside the package), not MNIST, which cannot be downloaded here. A run:

1. ``old``: train :class:`CNN` with 4 outputs on digits 0-3, every seed in one jitted, vmapped
   call (the whole loop is a ``lax.scan`` over minibatch steps).
2. transplant every seed's parameters into the 6-output CNN for digits 4-9 in one vmapped
   :func:`flaxsurgery.transplant` call per preset. The output space ``out`` has IDs
   ``0, 1, 2, 3`` in the old network and ``4, ..., 9`` in the new one: every old output unit is
   removed and every new one is added, so the conv layers and ``Dense_0`` are transplanted whole
   and only the output layer is new. Preset ``"preserving"`` gives the new outputs the ``mean``
   rule (each new class's weights and bias are the mean of the four old classes', so the six
   start identical: the logits tie and the network starts at chance, until the first gradient
   step, which differs per class, breaks the tie); preset ``"seed"`` gives them ``fresh``
   (the new network's own initialisation of the output layer).
3. train the new CNN on digits 4-9 from each transplant and from scratch (the same fresh
   initialisation the ``fresh`` rule takes from), the three arms in one jitted, vmapped call,
   seed ``i`` of every arm on the same minibatch key.

The layouts come from :func:`flaxsurgery.trace_layout`. scikit-learn is imported only when the
data are loaded, so ``import experiments.digits`` needs none of it.

Example:
  >>> import jax
  >>> config = Config(steps=20, eval_every=10)
  >>> data = load_split((0, 1, 2, 3))
  >>> train = make_train(config, CNN(classes=4), data)
  >>> params = init_params(CNN(classes=4), jax.random.split(jax.random.key(0), 2))
  >>> out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(1), 2), params)
  >>> out.accuracy.shape  # (seeds, evaluations): after steps 0, 10 and 20
  (2, 3)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxsurgery as fs
from experiments import results
from experiments.common import ARMS, PRESETS, init_population, plan_between, split_arms, stack_arms
from flaxsurgery.rl.dqn import evaluation_steps

OLD_CLASSES = (0, 1, 2, 3)
NEW_CLASSES = (4, 5, 6, 7, 8, 9)
THRESHOLD = 0.9  # test accuracy counted as "learned"; docs/digits.md says why
DATASET = "sklearn.datasets.load_digits (8x8 handwritten digits)"


@dataclasses.dataclass(frozen=True)
class Config:
    """Training hyperparameters, the same for every phase and arm.

    Attributes:
      steps: minibatch gradient steps of each phase.
      batch_size: training images per step (drawn uniformly with replacement).
      eval_every: steps between test-accuracy evaluations (plus one at step 0).
      learning_rate: Adam's step size.
      test_fraction: share of every digit held out as the fixed test set.
      split_seed: seed of the fixed train/test split.
    """

    steps: int = 300
    batch_size: int = 32
    eval_every: int = 5
    learning_rate: float = 1e-3
    test_fraction: float = 0.3
    split_seed: int = 0

    def __post_init__(self):
        if self.steps % self.eval_every:
            raise ValueError(f"steps={self.steps} is not a multiple of eval_every={self.eval_every}")

    @property
    def eval_steps(self) -> np.ndarray:
        """int (evaluations,): the step of every evaluation, 0 and each ``eval_every``."""
        return evaluation_steps(self.steps, self.eval_every)


class CNN(nn.Module):
    """Conv 3x3 (16), 2x2 average pool, conv 3x3 (32), flatten (channels fastest), the logits.

    The only dense layer is the output layer, so a transplant to other classes keeps the two
    conv layers and replaces the output layer's units.
    """

    classes: int
    channels: Sequence[int] = (16, 32)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:  # (batch, 8, 8, 1) -> (batch, classes)
        x = nn.relu(nn.Conv(self.channels[0], (3, 3))(images))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # 8x8 -> 4x4
        x = nn.relu(nn.Conv(self.channels[1], (3, 3))(x))
        x = x.reshape((x.shape[0], -1))  # 4 * 4 * 32 = 512 features
        return nn.Dense(self.classes)(x)


class Split(NamedTuple):
    """Images (n, 8, 8, 1) in [0, 1] and labels as positions in ``classes`` (int32)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple


def load_split(classes: Sequence[int], test_fraction: float = 0.3, seed: int = 0) -> Split:
    """The digits of `classes` from one fixed, stratified train/test split of all ten digits.

    Labels are positions in `classes` (digit 4 is label 0 of ``(4, ..., 9)``), which is the
    output unit whose ID is that digit. Imports scikit-learn.

    >>> s = load_split((4, 9))
    >>> sorted(set(s.y_train.tolist())), s.x_train.shape[1:]
    ([0, 1], (8, 8, 1))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    position = {d: i for i, d in enumerate(classes)}

    def pick(x, y):
        keep = np.isin(y, classes)
        return x[keep], np.array([position[d] for d in y[keep]], np.int32)

    return Split(*pick(x_train, y_train), *pick(x_test, y_test), tuple(classes))


# ---------------------------------------------------------------------------------- training


class Trained(NamedTuple):
    """A trained population's parameters and learning curves (leading seed axis under vmap)."""

    params: Any
    accuracy: jax.Array  # (evaluations,) test accuracy at Config.eval_steps


def init_params(network: CNN, keys: jax.Array) -> Any:
    """One initialisation per key, stacked on a leading seed axis."""
    return init_population(network, (1, 8, 8, 1), keys)


def make_train(config: Config, network: CNN, data: Split):
    """``train(key, params) -> Trained``: Adam from a fresh state, minibatches drawn with `key`.

    The loop is two nested ``lax.scan``s (evaluations, then steps); vmap it over seeds.
    """
    tx = optax.adam(config.learning_rate)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def accuracy(params):
        return jnp.mean(network.apply(params, x_test).argmax(-1) == y_test)

    def loss(params, x, y):
        logits = network.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, key):
        params, opt_state = carry
        idx = jax.random.randint(key, (config.batch_size,), 0, x_train.shape[0])
        grads = jax.grad(loss)(params, x_train[idx], y_train[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def interval(carry, key):
        carry, _ = jax.lax.scan(step, carry, jax.random.split(key, config.eval_every))
        return carry, accuracy(carry[0])

    def train(key, params):
        first = accuracy(params)
        carry = (params, tx.init(params))
        keys = jax.random.split(key, config.steps // config.eval_every)
        (params, _), accs = jax.lax.scan(interval, carry, keys)
        return Trained(params, jnp.concatenate([first[None], accs]))

    return train


# ---------------------------------------------------------------------------------- transplant


def make_plan(preset: str, old_classes: Sequence[int] = OLD_CLASSES,
              new_classes: Sequence[int] = NEW_CLASSES) -> fs.Plan:
    """The plan from the `old_classes` CNN to the `new_classes` CNN, layouts traced.

    The output space ``out`` carries the digits as unit IDs; every other space keeps its units.

    >>> print(make_plan("preserving").report())  # doctest: +ELLIPSIS
    space             role     old  new  kept added removed  rule               preserves
    Conv_0            hidden    16   16    16     0       0  fresh_in_zero_out  function
    ...
    out               output     4    6     0     6       4  mean               none
      out: 4 old units removed: their contribution is lost
    overall: preserves none
    """
    return plan_between((CNN(len(old_classes)), (8, 8, 1)), (CNN(len(new_classes)), (8, 8, 1)),
                        {"out": (list(old_classes), list(new_classes))}, preset=preset)


def transplant_population(plan: fs.Plan, old_params: Any, fresh_params: Any) -> Any:
    """Every seed's parameters (leading seed axis) transplanted in one jitted, vmapped call."""
    return jax.jit(jax.vmap(lambda old, fresh: fs.transplant(old, plan, fresh)))(old_params, fresh_params)


# ---------------------------------------------------------------------------------- run


def run(config: Config, seeds: int = 20, seed: int = 0, verbose: bool = True) -> dict:
    """All phases with `seeds` seeds per arm.

    Returns:
      ``{arm: accuracy}``, each (seeds, evaluations) of test accuracy at ``config.eval_steps``:
      ``old`` on digits 0-3, the others on digits 4-9.
    """
    say = print if verbose else (lambda *a, **k: None)
    key_old, key_old_init, key_new, key_new_init = jax.random.split(jax.random.key(seed), 4)
    old_data = load_split(OLD_CLASSES, config.test_fraction, config.split_seed)
    new_data = load_split(NEW_CLASSES, config.test_fraction, config.split_seed)
    old_net, new_net = CNN(len(OLD_CLASSES)), CNN(len(NEW_CLASSES))

    # Phase 1: the old CNN on digits 0-3.
    start = time.perf_counter()
    old_init = init_params(old_net, jax.random.split(key_old_init, seeds))
    train_old = make_train(config, old_net, old_data)
    old = jax.jit(jax.vmap(train_old))(jax.random.split(key_old, seeds), old_init)
    old.accuracy.block_until_ready()
    say(f"[digits_classes] old: {seeds} seeds, {config.steps} steps, {time.perf_counter() - start:.0f}s",
        flush=True)

    # Phase 2: transplant every seed with each preset; fresh values and scratch share one init.
    fresh = init_params(new_net, jax.random.split(key_new_init, seeds))
    starts = {}
    for arm, preset in PRESETS.items():
        plan = make_plan(preset)
        say(f"[digits_classes] {arm} (preset {preset!r}):\n{plan.report()}", flush=True)
        starts[arm] = transplant_population(plan, old.params, fresh)
    starts["scratch"] = fresh

    # Phase 3: the new CNN on digits 4-9 from every start, seed i of every arm on one key.
    start = time.perf_counter()
    arms = list(starts)
    stacked, keys = stack_arms(starts, key_new, seeds)
    new = jax.jit(jax.vmap(make_train(config, new_net, new_data)))(keys, stacked)
    accuracy = split_arms(arms, np.asarray(new.accuracy), seeds)
    say(f"[digits_classes] {' + '.join(arms)}: {len(arms) * seeds} runs, {config.steps} steps, "
        f"{time.perf_counter() - start:.0f}s", flush=True)
    return {"old": np.asarray(old.accuracy), **accuracy}


# ---------------------------------------------------------------------------------- report


def summarise(config: Config, accuracy: dict, wall_s: float, seed: int = 0) -> dict:
    """The RL experiments' ``summary.json`` format, with test accuracy as the "return".

    Per arm the statistics of :func:`experiments.results.summarise_arm`: mean and 95%
    half-width per evaluation, first and final accuracy, AUC (the mean test accuracy over the
    phase's evaluations) with its 95% interval over seeds, and the first evaluated step whose
    mean accuracy reaches :data:`THRESHOLD`.
    """
    steps = config.eval_steps
    arms = {arm: results.summarise_arm(steps, accuracy[arm], THRESHOLD) for arm in ARMS}
    return {
        "experiment": "digits_classes",
        "env": DATASET,
        "metric": "test_accuracy",
        "seeds": int(accuracy["old"].shape[0]),
        "steps_per_phase": config.steps,
        "threshold": THRESHOLD,
        "wall_s": wall_s,
        "config": {
            "training": dataclasses.asdict(config),
            "optimizer": "adam, fresh state at the start of every phase",
            "network": "Conv(16, 3x3) relu, avg_pool 2x2, Conv(32, 3x3) relu, flatten, Dense(classes)",
            "old": {"classes": list(OLD_CLASSES)},
            "new": {"classes": list(NEW_CLASSES)},
            "spaces": {"out": [list(OLD_CLASSES), list(NEW_CLASSES)]},
            "presets": dict(PRESETS),
            "seed": seed,
            "steps_are": "minibatch gradient steps",
            "return_is": "test accuracy (old: digits 0-3; other arms: digits 4-9)",
        },
        "arms": arms,
        "paired_vs_scratch": {arm: results.paired_difference(accuracy[arm], accuracy["scratch"],
                                                             steps, THRESHOLD)
                              for arm in PRESETS},
    }


def report(summary: dict, out: Path) -> Path:
    """Writes ``summary.json`` and ``curves.png`` under `out`; returns the plot's path."""
    return results.write(results.with_aggregates(summary), out,
                         xlabel="minibatch steps (0 = transplant)",
                         ylabel="test accuracy (old: digits 0-3)",
                         title="digits 0-3 -> 4-9, conv layers transplanted")


def markdown_table(summary: dict) -> str:
    """The arms as a markdown table of test accuracies (three decimals)."""
    return results.markdown_table(summary, measure="accuracy", digits=3)
