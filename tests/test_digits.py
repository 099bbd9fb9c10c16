"""The digit-classes conv transplant (experiments.digits), on tiny budgets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import digits
from flaxsurgery.rules import GREEDY_MARGIN

pytest.importorskip("sklearn")


def test_split_holds_only_the_asked_classes_as_positions_and_is_fixed():
    new = digits.load_split(digits.NEW_CLASSES)
    assert new.classes == (4, 5, 6, 7, 8, 9)
    for y in (new.y_train, new.y_test):
        assert y.dtype == np.int32 and sorted(set(y.tolist())) == [0, 1, 2, 3, 4, 5]
    assert new.x_train.shape[1:] == (8, 8, 1) and 0.0 <= new.x_train.min() <= new.x_train.max() <= 1.0
    again = digits.load_split(digits.NEW_CLASSES)
    np.testing.assert_array_equal(new.x_test, again.x_test)  # one fixed split
    old = digits.load_split(digits.OLD_CLASSES)
    assert sorted(set(old.y_test.tolist())) == [0, 1, 2, 3]
    # About 30% of every digit is held out, and no training image is a test image.
    assert 0.25 < len(new.y_test) / (len(new.y_test) + len(new.y_train)) < 0.35
    train_rows = {x.tobytes() for x in new.x_train}
    assert not any(x.tobytes() in train_rows for x in new.x_test)


def test_plan_keeps_the_convs_and_makes_every_output_unit_new():
    plan = digits.make_plan("preserving")
    np.testing.assert_array_equal(plan.index("out"), [-1] * 6)  # IDs 4..9: none was in 0..3
    np.testing.assert_array_equal(plan.index("Conv_1"), np.arange(32))
    assert plan.space("out").rule.name == "mean"
    assert digits.make_plan("seed").space("out").rule.name == "fresh"


@pytest.mark.parametrize("preset", ["preserving", "seed"])
def test_population_transplant_moves_convs_and_fills_the_output_layer_by_rule(preset):
    seeds = 3
    old = digits.init_params(digits.CNN(4), jax.random.split(jax.random.key(0), seeds))
    fresh = digits.init_params(digits.CNN(6), jax.random.split(jax.random.key(1), seeds))
    new = digits.transplant_population(digits.make_plan(preset), old, fresh)
    for layer in ("Conv_0", "Conv_1"):
        for name in ("kernel", "bias"):
            np.testing.assert_array_equal(new["params"][layer][name], old["params"][layer][name])
    out, old_out = new["params"]["Dense_0"], old["params"]["Dense_0"]
    assert out["kernel"].shape == (seeds, 512, 6)
    if preset == "seed":  # fresh: the new network's own output layer
        np.testing.assert_array_equal(out["kernel"], fresh["params"]["Dense_0"]["kernel"])
    else:  # mean: every new class gets the mean of the old classes' weights, per seed, and
        # the preset's margin below it on the bias
        for name, margin in (("kernel", 0.0), ("bias", GREEDY_MARGIN)):
            mean = old_out[name].mean(axis=-1, keepdims=True) - margin
            np.testing.assert_allclose(out[name], np.broadcast_to(mean, out[name].shape), rtol=1e-6)
        # so the six logits tie on every image (softmax starts uniform).
        one = jax.tree.map(lambda a: a[0], new)
        logits = digits.CNN(6).apply(one, jnp.asarray(digits.load_split((4,)).x_test[:5]))
        np.testing.assert_allclose(logits, np.broadcast_to(logits[:, :1], logits.shape), rtol=1e-5)


def test_short_training_beats_chance():
    config = digits.Config(steps=40, eval_every=20)
    net = digits.CNN(6)
    train = digits.make_train(config, net, digits.load_split(digits.NEW_CLASSES))
    params = digits.init_params(net, jax.random.split(jax.random.key(0), 2))
    out = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(1), 2), params)
    assert out.accuracy.shape == (2, 3)
    assert float(out.accuracy[:, -1].min()) > 0.5  # chance is 1/6
    assert float(out.accuracy[:, -1].mean()) > float(out.accuracy[:, 0].mean()) + 0.3


def test_run_writes_the_experiments_summary_format(tmp_path):
    config = digits.Config(steps=10, eval_every=5)
    accuracy = digits.run(config, seeds=2, verbose=False)
    assert {k: v.shape for k, v in accuracy.items()} == {arm: (2, 3) for arm in digits.ARMS}
    # Preset "preserving" starts at the frequency of digit 4 (all logits tie; argmax picks 4).
    share_of_4 = np.mean(digits.load_split(digits.NEW_CLASSES).y_test == 0)
    np.testing.assert_allclose(accuracy["transplant"][:, 0], share_of_4, rtol=1e-6)
    summary = digits.summarise(config, accuracy, wall_s=1.0)
    path = digits.report(summary, tmp_path / "digits_classes")
    assert path.exists()
    written = json.loads((tmp_path / "digits_classes" / "summary.json").read_text())
    assert written["metric"] == "test_accuracy" and written["threshold"] == digits.THRESHOLD
    assert set(written["arms"]) == set(digits.ARMS)
    arm = written["arms"]["scratch"]
    assert arm["steps"] == [0, 5, 10] and len(arm["return_mean"]) == len(arm["return_ci95"]) == 3
    assert set(arm) >= {"first_return", "final_return", "auc", "auc_ci95", "steps_to_threshold"}
    assert set(written["paired_vs_scratch"]) == {"transplant", "transplant_seed"}
    assert "| transplant |" in digits.markdown_table(written)
