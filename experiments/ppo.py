"""PPO transplant experiments: train an old actor-critic, change it, train on from the transplant.

A :class:`PPOExperiment` is an old :class:`~flaxsurgery.rl.ppo.ActorCritic` with the view it
was trained on, a new one with its view, and the transplanted arms, each a set of
:func:`flaxsurgery.plan` arguments. A run:

1. ``old``: train the old network, one population of seeds in one jitted, vmapped call.
2. transplant every seed's actor, critic and Adam state into the new network, one vmapped
   call per arm; measure on observations the old agent visits how far each start's sampled
   policy is from the old one (KL) and whether it keeps the greedy action.
3. train the new network from each transplant and from scratch (arm ``scratch``): all arms in
   one jitted, vmapped call, arm ``a`` seed ``i`` with the same training key.

The headline is steps to threshold: per arm, the share of seeds whose greedy evaluation reaches
``threshold`` and, per transplanted arm, the paired difference from scratch in the step where
each seed first reaches it. A seed that never reaches it is counted at the budget
(``total_steps``, the last evaluation): its true step is later, so this is a lower bound, and a
difference between a reaching and a censored seed is smaller than the true one. Then AUC and
final return with paired 95% intervals. Writes ``<out>/<name>/summary.json`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import flaxsurgery as fs
from experiments import common, results
from flaxsurgery.rl.envs import EnvView
from flaxsurgery.rl.ppo import (
    ACTIONS,
    ActorCritic,
    PPOConfig,
    Trained,
    make_optimizer,
    make_train,
    policy_kl,
)

# Samples per seed on which the transplanted policies are compared with the old one.
POLICY_SAMPLES = 1_000


@dataclasses.dataclass(frozen=True)
class PPOExperiment(common.ViewChange):
    """An old actor-critic, a new one, and the transplanted arms: the attributes of
    :class:`~experiments.common.ViewChange` (``config`` a :class:`~flaxsurgery.rl.PPOConfig`)
    and ``arms``.

    Attributes:
      arms: ``{arm: keyword arguments of flaxsurgery.plan}`` (``preset=``, ``rules=``) of each
        transplanted arm; ``scratch`` is always added.
    """

    config: PPOConfig
    arms: Mapping[str, Mapping[str, Any]]

    def build(self, hidden: tuple[int, ...], num_actions: int) -> ActorCritic:
        return ActorCritic(hidden, num_actions)


# ---------------------------------------------------------------------------------- surgery


def make_plan(experiment: PPOExperiment, **plan_kwargs) -> fs.Plan:
    """The plan from the old actor-critic to the new one: layouts traced from the forward pass
    (input ``obs``, actions ``out/0``, value ``out/1``, hidden spaces ``actor/Dense_0``, ...),
    unit IDs of ``obs`` and of the actions from the views."""
    return experiment.plan(ACTIONS, **plan_kwargs)


def transplant_agents(plan: fs.Plan, old: Trained, fresh_params, fresh_opt_state):
    """Every seed's actor, critic and Adam state, transplanted in one call: ``(params,
    opt_state)`` with a leading seed axis."""

    def one(params, opt_state, fresh, fresh_opt):
        return fs.transplant(params, plan, fresh), fs.transplant_state(opt_state, plan, fresh_opt)

    return jax.jit(jax.vmap(one))(old.params, old.opt_state, fresh_params, fresh_opt_state)


def visited_observations(view: EnvView, network: ActorCritic, params, key, steps: int):
    """(steps, full observation size): the environment's full observations while ``network``
    acts on ``view`` with its sampled policy; episodes restart as they end. Either network's
    inputs are then its view's ``observe`` of them."""
    full = EnvView(view.env_id)  # every feature and action, in the environment's order
    key_reset, key_steps = jax.random.split(key)
    obs, env_state = full.reset(key_reset)

    def step(carry, key):
        obs, env_state = carry
        key_action, key_env = jax.random.split(key)
        logits, _ = network.apply(params, view.observe(obs))
        action = jnp.asarray(view.action_index)[jax.random.categorical(key_action, logits)]
        next_obs, env_state, *_ = full.step(key_env, env_state, action)
        return (next_obs, env_state), obs

    _, seen = jax.lax.scan(step, (obs, env_state), jax.random.split(key_steps, steps))
    return seen


def compare_policies(experiment: PPOExperiment, action_index, old_params, new_params, samples):
    """Per seed, on ``samples`` (seeds, n, full obs): the mean and max KL(old || new) of the
    sampled policies, and the share of samples whose greedy action keeps its ID.
    ``action_index``: each new action's old action, -1 for new ones (``plan.index(ACTIONS)``)."""
    old_view, new_view = experiment.old_view, experiment.new_view
    old_logits = jax.vmap(experiment.old_network.apply)(old_params, old_view.observe(samples))[0]
    new_logits = jax.vmap(experiment.new_network.apply)(new_params, new_view.observe(samples))[0]
    kl = np.asarray(policy_kl(old_logits, new_logits, action_index))  # (seeds, n)
    old_ids = np.array(old_view.action_ids, dtype=object)
    new_ids = np.array(new_view.action_ids, dtype=object)
    same = old_ids[np.asarray(old_logits.argmax(-1))] == new_ids[np.asarray(new_logits.argmax(-1))]
    return {"kl_mean": kl.mean(axis=1), "kl_max": kl.max(axis=1), "greedy_kept": same.mean(axis=1)}


def verify_first_seed(experiment: PPOExperiment, plan: fs.Plan, old_params, new_params, samples):
    """:func:`flaxsurgery.verify` of seed 0's actor logits on its visited observations."""
    old_0, new_0 = jax.tree.map(lambda leaf: leaf[0], (old_params, new_params))
    return fs.verify(
        lambda v: experiment.old_network.apply(old_0, v)[0],
        lambda v: experiment.new_network.apply(new_0, v)[0],
        experiment.old_view.observe(samples[0]),
        plan,
        inputs="obs",
        outputs=ACTIONS,
        x_new=experiment.new_view.observe(samples[0]),
    )


# ---------------------------------------------------------------------------------- run


def population_train(config: PPOConfig, view: EnvView, network: ActorCritic, progress):
    """Every seed of a population in one jitted, vmapped call: ``(keys, *init) -> Trained``."""
    return jax.jit(jax.vmap(make_train(config, view, network, progress)))


def run(experiment: PPOExperiment, seeds: int = 20, seed: int = 0) -> tuple[dict, dict, dict]:
    """Run all phases with ``seeds`` seeds per arm.

    Returns:
      ``(returns, policies, params)``: ``{arm: (seeds, evaluations) greedy returns}`` at
      ``experiment.config.eval_steps``; ``{arm: per-seed policy comparison at the start}``
      (:func:`compare_policies`, plus seed 0's :func:`flaxsurgery.verify` report); and
      ``{arm: final parameters}`` with a leading seed axis.
    """
    config, name = experiment.config, experiment.name
    tx = make_optimizer(config)
    key_old, key_new, key_init, key_samples = jax.random.split(jax.random.key(seed), 4)

    # Phase 1: the old network, on the old view.
    progress = common.Progress(name, "old", seeds, config.total_steps)
    old = population_train(config, experiment.old_view, experiment.old_network, progress)(
        jax.random.split(key_old, seeds)
    )
    samples = jax.jit(jax.vmap(
        lambda p, k: visited_observations(experiment.old_view, experiment.old_network, p, k,
                                          POLICY_SAMPLES)
    ))(old.params, jax.random.split(key_samples, seeds))

    # Phase 2: transplant every seed with each arm's plan. Fresh values (and the scratch arm)
    # come from the same per-seed initialisation of the new network.
    new_net, new_view = experiment.new_network, experiment.new_view
    fresh = common.init_population(new_net, new_view.obs_shape, jax.random.split(key_init, seeds))
    fresh_opt = jax.vmap(tx.init)(fresh)
    starts, policies = {}, {}
    for arm, plan_kwargs in experiment.arms.items():
        plan = make_plan(experiment, **plan_kwargs)
        starts[arm] = transplant_agents(plan, old, fresh, fresh_opt)
        policies[arm] = compare_policies(experiment, plan.index(ACTIONS), old.params,
                                         starts[arm][0], samples)
        check = verify_first_seed(experiment, plan, old.params, starts[arm][0], samples)
        policies[arm]["verify_seed0"] = check._asdict()
        print(f"[{name}] {arm} ({plan_kwargs}):\n{plan.report()}\n"
              f"seed 0 on {check.samples:,} visited observations: max |logits_new - logits_old| ="
              f" {check.max_abs_diff:.3g}, greedy agreement {check.greedy_agreement:.1%}; "
              f"KL(old || new) over seeds: mean {policies[arm]['kl_mean'].mean():.3g}, "
              f"max {policies[arm]['kl_max'].max():.3g}", flush=True)
    starts["scratch"] = (fresh, fresh_opt)
    policies["scratch"] = compare_policies(experiment, plan.index(ACTIONS), old.params, fresh,
                                           samples)  # every arm's plan has the same IDs

    # Phase 3: the new network from each start, every arm's seed i on the same key.
    arms = list(starts)
    progress = common.Progress(name, " + ".join(arms), len(arms) * seeds, config.total_steps)
    stacked, keys = common.stack_arms(starts, key_new, seeds)
    new = population_train(config, new_view, new_net, progress)(keys, *stacked)
    returns = common.split_arms(arms, np.asarray(new.returns), seeds)
    params = common.split_arms(arms, new.params, seeds)
    return ({"old": np.asarray(old.returns), **returns}, policies,
            {"old": old.params, **params})


# ---------------------------------------------------------------------------------- statistics


def steps_to_threshold(steps: np.ndarray, returns: np.ndarray, threshold: float):
    """:func:`experiments.results.seed_steps_to_threshold`, a seed that never reaches
    ``threshold`` counted at the budget (the last evaluation)."""
    return results.seed_steps_to_threshold(steps, returns, threshold, censored_at=steps[-1])


def summarise(experiment: PPOExperiment, returns: dict, policies: dict, wall_s: float) -> dict:
    """The experiment's summary: per arm the curves, AUC, final return, steps to threshold per
    seed and the policy comparison at the start; per transplanted arm the paired differences
    from scratch."""
    config = experiment.config
    steps = config.eval_steps
    arms = {}
    for arm, arm_returns in returns.items():
        first_steps, reached = steps_to_threshold(steps, arm_returns, experiment.threshold)
        arms[arm] = {
            **results.summarise_arm(steps, arm_returns, experiment.threshold),
            "reached": int(reached.sum()),
            "share_reached": float(reached.mean()),
            "seed_steps_to_threshold": [int(s) if r else None
                                        for s, r in zip(first_steps, reached)],
            "median_steps_to_threshold": float(np.median(first_steps)),
            "final_per_seed": [float(r) for r in arm_returns[:, -1]],
        }
        if arm in policies:
            p = policies[arm]
            arms[arm]["start_policy"] = {
                "kl_mean": float(p["kl_mean"].mean()), "kl_max": float(p["kl_max"].max()),
                "greedy_kept": float(p["greedy_kept"].mean()),
                **({"verify_seed0": p["verify_seed0"]} if "verify_seed0" in p else {}),
            }
    scratch_steps, scratch_reached = steps_to_threshold(steps, returns["scratch"],
                                                        experiment.threshold)
    paired = {}
    for arm in experiment.arms:
        arm_steps, arm_reached = steps_to_threshold(steps, returns[arm], experiment.threshold)
        paired[arm] = {
            **results.paired_difference(returns[arm], returns["scratch"]),
            "steps_to_threshold": {
                **results.interval((arm_steps - scratch_steps).astype(float)),
                "censored_arm": int((~arm_reached).sum()),
                "censored_scratch": int((~scratch_reached).sum()),
            },
        }
    return {
        "experiment": experiment.name,
        "env": experiment.new_view.env_id,
        "learner": "ppo",
        "seeds": int(returns["old"].shape[0]),
        "steps_per_phase": config.total_steps,
        "threshold": experiment.threshold,
        "censoring": "a seed that never reaches the threshold counts at the budget (total_steps)",
        "wall_s": wall_s,
        "config": {
            "ppo": dataclasses.asdict(config),
            "old": {"obs_ids": list(experiment.old_view.obs_ids),
                    "action_ids": list(experiment.old_view.action_ids),
                    "hidden": list(experiment.old_hidden)},
            "new": {"obs_ids": list(experiment.new_view.obs_ids),
                    "action_ids": list(experiment.new_view.action_ids),
                    "hidden": list(experiment.new_hidden)},
            "arms": {arm: repr(kwargs) for arm, kwargs in experiment.arms.items()},
        },
        "arms": arms,
        "paired_vs_scratch": paired,
    }


def headline_table(summary: dict) -> str:
    """Markdown: per arm, the share of seeds reaching the threshold, the median step, the paired
    step difference from scratch, AUC, final return and the start's KL from the old policy."""
    threshold, seeds = summary["threshold"], summary["seeds"]
    lines = [
        (f"| arm | reach {threshold:g} | median steps to {threshold:g} | steps - scratch, paired "
         f"(95% CI) | first | AUC (95% CI) | AUC - scratch (95% CI) | final (95% CI) "
         f"| final - scratch (95% CI) | KL(old‖start) mean / max |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ci(d: dict, fmt: str) -> str:
        return f"{d['mean']:{fmt}} ({d['ci95'][0]:{fmt}}, {d['ci95'][1]:{fmt}})"

    for arm, a in summary["arms"].items():
        p = summary["paired_vs_scratch"].get(arm)
        final_ci = results.ci95(np.array(a["final_per_seed"]))
        mean_final = a["final_return"]
        final = f"{mean_final:.1f} ({mean_final - final_ci:.1f}, {mean_final + final_ci:.1f})"
        lo, hi = a["auc_ci95"]
        kl = a.get("start_policy")
        kl_text = f"{kl['kl_mean']:.2g} / {kl['kl_max']:.2g}" if kl else ""
        lines.append(
            f"| {arm} | {a['reached']}/{seeds} | {a['median_steps_to_threshold']:,.0f} "
            f"| {ci(p['steps_to_threshold'], ',.0f') if p else ''} | {a['first_return']:.1f} "
            f"| {a['auc']:.1f} ({lo:.1f}, {hi:.1f}) | {ci(p['auc'], '+.1f') if p else ''} "
            f"| {final} | {ci(p['final'], '+.1f') if p else ''} "
            f"| {kl_text} |"
        )
    return "\n".join(lines)


def main(experiment: PPOExperiment, argv: Sequence[str] | None = None) -> tuple[dict, dict]:
    """Command line of an example: ``--seeds``, ``--steps`` (per phase), ``--out``.

    Returns:
      ``(summary, params)``: :func:`summarise`'s summary and every arm's final parameters.
    """
    args = common.parse_args(f"PPO transplant experiment {experiment.name}.", argv, seeds=20,
                      steps=experiment.config.total_steps,
                      steps_help="environment steps per phase (a multiple of the rollout size)")
    config = experiment.config
    evaluations = config.total_steps // config.eval_every
    # Keep the number of evaluations; each interval a whole number of rollouts.
    rollouts = max(1, args.steps // evaluations // config.batch_size)
    eval_every = rollouts * config.batch_size
    experiment = dataclasses.replace(experiment, config=dataclasses.replace(
        config, total_steps=args.steps // eval_every * eval_every, eval_every=eval_every))
    start = time.perf_counter()
    returns, policies, params = run(experiment, seeds=args.seeds)
    summary = summarise(experiment, returns, policies, time.perf_counter() - start)
    results.write(summary, args.out / experiment.name, xlabel="environment steps (0 = transplant)",
                  ylabel="greedy evaluation return",
                  title=f"PPO {experiment.name} ({summary['env']})")
    print(f"\n{experiment.name}: {args.seeds} seeds, {experiment.config.total_steps:,} steps per "
          f"phase, {summary['wall_s']:.0f}s\n\n{headline_table(summary)}\n", flush=True)
    return summary, params
