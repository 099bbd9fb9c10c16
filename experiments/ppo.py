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

An arm given as plan arguments *restarts* the run the way a fresh run starts: a fresh
observation normaliser and the step-size schedule from its start (Adam's moments and count
move with the plan). A :class:`Continue` arm continues the old run instead: the old run's
normaliser moved through the plan (:func:`flaxsurgery.transplant_normalizer`) and, if it says
so, the schedule's count kept. With ``control``, the old agent also continues on its own network
and view (arm ``control``: its parameters, Adam state and normaliser, the schedule restarted),
trained with the same keys: how much PPO itself moves when training goes on without surgery.

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
    ObsNormalizer,
    PPOConfig,
    Trained,
    fresh_normalizer,
    make_optimizer,
    make_train,
    normalize,
    policy_kl,
    step_size,
)

# Samples per seed on which the transplanted policies are compared with the old one.
POLICY_SAMPLES = 1_000


@dataclasses.dataclass(frozen=True)
class Continue:
    """A transplanted arm that continues the old run: the old run's observation normaliser
    moved through the plan, and the step-size schedule's count kept or restarted.

    Attributes:
      plan: keyword arguments of :func:`flaxsurgery.plan` (``preset=``, ``rules=``).
      keep_schedule: start the schedule's count where the old run's ended (an annealed
        schedule then stays at its end); False: from 0, as a restarted arm.
    """

    plan: Mapping[str, Any]
    keep_schedule: bool


@dataclasses.dataclass(frozen=True)
class PPOExperiment(common.ViewChange):
    """An old actor-critic, a new one, and the transplanted arms: the attributes of
    :class:`~experiments.common.ViewChange` (``config`` a :class:`~flaxsurgery.rl.PPOConfig`)
    and ``arms``.

    Attributes:
      arms: ``{arm: keyword arguments of flaxsurgery.plan}`` (``preset=``, ``rules=``) of each
        restarted arm, or a :class:`Continue` for an arm that continues the old run;
        ``scratch`` is always added.
      control: add the arm ``control``: the old agent continuing on its own network and view.
      restart: the restarted arm the :class:`Continue` arms (and the control) are paired with
        in the summary (``paired_vs_restart``); None: no such pairing.
    """

    config: PPOConfig
    arms: Mapping[str, Mapping[str, Any] | Continue]
    control: bool = False
    restart: str | None = None

    def __post_init__(self):
        if self.restart is not None and self.restart not in self.arms:
            raise ValueError(f"restart={self.restart!r} is not one of the arms {list(self.arms)}")
        if self.restart is not None and isinstance(self.arms[self.restart], Continue):
            raise ValueError(f"restart={self.restart!r} names a Continue arm; name a restarted one")

    def plan_kwargs(self, arm: str) -> Mapping[str, Any]:
        """The :func:`flaxsurgery.plan` arguments of a transplanted arm."""
        spec = self.arms[arm]
        return spec.plan if isinstance(spec, Continue) else spec

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


def start_of(experiment: PPOExperiment, arm: str, plan: fs.Plan, old: Trained,
             seeds: int) -> tuple[ObsNormalizer, jax.Array]:
    """``(normaliser, schedule count)`` an arm's new phase starts from, with a leading seed
    axis: for a :class:`Continue` arm every seed's old normaliser moved along ``obs`` by the
    plan, and the old count where it keeps the schedule; otherwise fresh statistics and 0."""
    spec = experiment.arms[arm]
    if not isinstance(spec, Continue):
        return restarted(experiment.new_view, seeds)
    moved = jax.vmap(lambda stats: fs.transplant_normalizer(stats, plan, "obs"))(old.normalizer)
    updates = old.updates if spec.keep_schedule else jnp.zeros_like(old.updates)
    return moved, updates


def restarted(view: EnvView, seeds: int) -> tuple[ObsNormalizer, jax.Array]:
    """``(normaliser, schedule count)`` of a run that starts afresh on ``view``, per seed:
    statistics that have seen nothing and the count 0."""
    fresh = fresh_normalizer(view.obs_shape)
    return (jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (seeds, *leaf.shape)), fresh),
            jnp.zeros(seeds, jnp.int32))


def agent_logits(config: PPOConfig, network: ActorCritic, params, normalizer, obs):
    """The actor's logits on the view's observations ``obs``, normalised as the agent sees
    them; leaves of ``params`` and ``normalizer`` and ``obs`` with a leading seed axis."""
    return jax.vmap(lambda p, n, x: network.apply(p, normalize(config, n, x))[0])(
        params, normalizer, obs)


def visited_observations(view: EnvView, network: ActorCritic, params, key, steps: int,
                         config: PPOConfig | None = None, normalizer: ObsNormalizer | None = None):
    """(steps, full observation size): the environment's full observations while ``network``
    acts on ``view`` with its sampled policy (on observations normalised by ``normalizer``
    when ``config`` normalises them); episodes restart as they end. Either network's inputs
    are then its view's ``observe`` of them."""
    full = EnvView(view.env_id)  # every feature and action, in the environment's order
    key_reset, key_steps = jax.random.split(key)
    obs, env_state = full.reset(key_reset)

    def step(carry, key):
        obs, env_state = carry
        key_action, key_env = jax.random.split(key)
        seen = view.observe(obs)
        if config is not None and normalizer is not None:
            seen = normalize(config, normalizer, seen)
        logits, _ = network.apply(params, seen)
        action = jnp.asarray(view.action_index)[jax.random.categorical(key_action, logits)]
        next_obs, env_state, *_ = full.step(key_env, env_state, action)
        return (next_obs, env_state), obs

    _, seen = jax.lax.scan(step, (obs, env_state), jax.random.split(key_steps, steps))
    return seen


def compare_policies(experiment: PPOExperiment, action_index, old_agent, new_agent, samples):
    """Per seed, on ``samples`` (seeds, n, full obs): the mean and max KL(old || new) of the
    sampled policies, and the share of samples whose greedy action keeps its ID.
    ``action_index``: each new action's old action, -1 for new ones (``plan.index(ACTIONS)``);
    ``old_agent`` and ``new_agent``: ``(params, normaliser)``, each as its run starts."""
    config, old_view, new_view = experiment.config, experiment.old_view, experiment.new_view
    old_logits = agent_logits(config, experiment.old_network, *old_agent, old_view.observe(samples))
    new_logits = agent_logits(config, experiment.new_network, *new_agent, new_view.observe(samples))
    kl = np.asarray(policy_kl(old_logits, new_logits, action_index))  # (seeds, n)
    old_ids = np.array(old_view.action_ids, dtype=object)
    new_ids = np.array(new_view.action_ids, dtype=object)
    same = old_ids[np.asarray(old_logits.argmax(-1))] == new_ids[np.asarray(new_logits.argmax(-1))]
    return {"kl_mean": kl.mean(axis=1), "kl_max": kl.max(axis=1), "greedy_kept": same.mean(axis=1)}


def verify_first_seed(experiment: PPOExperiment, plan: fs.Plan, old: Trained, new_params,
                      samples):
    """:func:`flaxsurgery.verify` of seed 0's actor logits on its visited observations, as the
    networks' inputs: normalised by the old run's statistics, and for the new network by those
    statistics moved through the plan (what the plan claims is about the networks)."""
    config = experiment.config
    old_0, new_0, stats_0 = jax.tree.map(lambda leaf: leaf[0],
                                         (old.params, new_params, old.normalizer))
    moved_0 = fs.transplant_normalizer(stats_0, plan, "obs")
    return fs.verify(
        lambda v: experiment.old_network.apply(old_0, v)[0],
        lambda v: experiment.new_network.apply(new_0, v)[0],
        normalize(config, stats_0, experiment.old_view.observe(samples[0])),
        plan,
        inputs="obs",
        outputs=ACTIONS,
        x_new=normalize(config, moved_0, experiment.new_view.observe(samples[0])),
    )


# ---------------------------------------------------------------------------------- run


def population_train(config: PPOConfig, view: EnvView, network: ActorCritic, progress):
    """Every seed of a population in one jitted, vmapped call: ``(keys, *init) -> Trained``."""
    return jax.jit(jax.vmap(make_train(config, view, network, progress)))


def run(experiment: PPOExperiment, seeds: int = 20, seed: int = 0) -> tuple[dict, dict, dict]:
    """Run all phases with ``seeds`` seeds per arm.

    Returns:
      ``(returns, starts, params)``: ``{arm: (seeds, evaluations) greedy returns}`` at
      ``experiment.config.eval_steps``; ``{arm: the start of its new phase}``: the per-seed
      policy comparison (:func:`compare_policies`), seed 0's :func:`flaxsurgery.verify` report
      for a transplant, and what it continues (:func:`start_settings`); and
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
        lambda p, n, k: visited_observations(experiment.old_view, experiment.old_network, p, k,
                                             POLICY_SAMPLES, config, n)
    ))(old.params, old.normalizer, jax.random.split(key_samples, seeds))

    # Phase 2: transplant every seed with each arm's plan. Fresh values (and the scratch arm)
    # come from the same per-seed initialisation of the new network.
    new_net, new_view = experiment.new_network, experiment.new_view
    fresh = common.init_population(new_net, new_view.obs_shape, jax.random.split(key_init, seeds))
    fresh_opt = jax.vmap(tx.init)(fresh)
    starts, policies = {}, {}
    old_agent = (old.params, old.normalizer)
    for arm in experiment.arms:
        plan_kwargs = experiment.plan_kwargs(arm)
        plan = make_plan(experiment, **plan_kwargs)
        params, opt_state = transplant_agents(plan, old, fresh, fresh_opt)
        normalizer, updates = start_of(experiment, arm, plan, old, seeds)
        starts[arm] = (params, opt_state, normalizer, updates)
        policies[arm] = compare_policies(experiment, plan.index(ACTIONS), old_agent,
                                         (params, normalizer), samples)
        check = verify_first_seed(experiment, plan, old, params, samples)
        policies[arm]["verify_seed0"] = check._asdict()
        policies[arm]["start"] = start_settings(config, arm_kind(experiment, arm), updates)
        print(f"[{name}] {arm} ({experiment.arms[arm]}):\n{plan.report()}\n"
              f"seed 0 on {check.samples:,} visited observations: max |logits_new - logits_old| ="
              f" {check.max_abs_diff:.3g}, greedy agreement {check.greedy_agreement:.1%}; "
              f"KL(old || start) over seeds: mean {policies[arm]['kl_mean'].mean():.3g}, "
              f"max {policies[arm]['kl_max'].max():.3g}; {policies[arm]['start']}", flush=True)
    scratch_normalizer, scratch_updates = restarted(new_view, seeds)
    starts["scratch"] = (fresh, fresh_opt, scratch_normalizer, scratch_updates)
    policies["scratch"] = compare_policies(experiment, plan.index(ACTIONS), old_agent,
                                           (fresh, scratch_normalizer), samples)
    policies["scratch"]["start"] = start_settings(config, "scratch", scratch_updates)

    # Phase 3: the new network from each start, every arm's seed i on the same key.
    arms = list(starts)
    progress = common.Progress(name, " + ".join(arms), len(arms) * seeds, config.total_steps)
    stacked, keys = common.stack_arms(starts, key_new, seeds)
    new = population_train(config, new_view, new_net, progress)(keys, *stacked)
    returns = common.split_arms(arms, np.asarray(new.returns), seeds)
    params = common.split_arms(arms, new.params, seeds)

    # The control: the old agent going on without surgery, on the same keys as every arm.
    if experiment.control:
        progress = common.Progress(name, "control", seeds, config.total_steps)
        count_zero = jnp.zeros_like(old.updates)
        control = population_train(config, experiment.old_view, experiment.old_network, progress)(
            jax.random.split(key_new, seeds), old.params, old.opt_state, old.normalizer, count_zero)
        returns["control"] = np.asarray(control.returns)
        params["control"] = control.params
        policies["control"] = {"start": start_settings(config, "control", count_zero)}
    return ({"old": np.asarray(old.returns), **returns}, policies,
            {"old": old.params, **params})


def arm_kind(experiment: PPOExperiment, arm: str) -> str:
    """``"restart"``, ``"continue"`` (schedule restarted) or ``"continue, schedule kept"``."""
    spec = experiment.arms[arm]
    if not isinstance(spec, Continue):
        return "restart"
    return "continue, schedule kept" if spec.keep_schedule else "continue"


# What each kind of arm starts with besides its network and Adam state.
NORMALIZER_AT_START = {"restart": "fresh", "scratch": "fresh", "continue": "moved",
                       "continue, schedule kept": "moved", "control": "its own"}


def start_settings(config: PPOConfig, kind: str, updates: jax.Array) -> dict:
    """What an arm's new phase starts from besides its parameters: its kind, the normaliser it
    starts with (only when ``config.normalize_obs``), and the schedule's count and step size at
    the start, read from every seed's count (one value, or the range)."""
    counts = np.asarray(updates)
    rates = np.asarray(step_size(config, jnp.asarray(counts)))
    return {
        "kind": kind,
        "normalizer": NORMALIZER_AT_START[kind] if config.normalize_obs else "none",
        "updates": sorted({int(c) for c in counts}),
        "step_size": sorted({float(r) for r in rates}),
    }


# ---------------------------------------------------------------------------------- statistics


def steps_to_threshold(steps: np.ndarray, returns: np.ndarray, threshold: float):
    """:func:`experiments.results.seed_steps_to_threshold`, a seed that never reaches
    ``threshold`` counted at the budget (the last evaluation)."""
    return results.seed_steps_to_threshold(steps, returns, threshold, censored_at=steps[-1])


def paired(steps: np.ndarray, arm: np.ndarray, baseline: np.ndarray, threshold: float) -> dict:
    """Seed-by-seed differences ``arm - baseline`` (both (seeds, evaluations), seed ``i``
    trained on the same key): AUC and final return, and steps to threshold with the censored
    seeds of each side counted."""
    arm_steps, arm_reached = steps_to_threshold(steps, arm, threshold)
    base_steps, base_reached = steps_to_threshold(steps, baseline, threshold)
    return {
        **results.paired_difference(arm, baseline),
        "steps_to_threshold": {
            **results.interval((arm_steps - base_steps).astype(float)),
            "censored_arm": int((~arm_reached).sum()),
            "censored_baseline": int((~base_reached).sum()),
        },
    }


def summarise(experiment: PPOExperiment, returns: dict, policies: dict, wall_s: float) -> dict:
    """The experiment's summary: per arm the curves, AUC, final return, steps to threshold per
    seed and the start (policy comparison, normaliser, schedule); per transplanted arm (and the
    control) the paired differences from scratch, and per :class:`Continue` arm (and the
    control) those from the restarted arm ``experiment.restart``."""
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
        p = policies.get(arm, {})
        if "kl_mean" in p:
            arms[arm]["start_policy"] = {
                "kl_mean": float(p["kl_mean"].mean()), "kl_max": float(p["kl_max"].max()),
                "greedy_kept": float(p["greedy_kept"].mean()),
                **({"verify_seed0": p["verify_seed0"]} if "verify_seed0" in p else {}),
            }
        if "start" in p:
            arms[arm]["start"] = p["start"]
    compared = [*experiment.arms, *(["control"] if "control" in returns else [])]
    vs_scratch = {arm: paired(steps, returns[arm], returns["scratch"], experiment.threshold)
                  for arm in compared}
    continuing = [arm for arm in compared
                  if arm == "control" or isinstance(experiment.arms[arm], Continue)]
    vs_restart = {} if experiment.restart is None else {
        arm: paired(steps, returns[arm], returns[experiment.restart], experiment.threshold)
        for arm in continuing}
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
            "arms": {arm: repr(spec) for arm, spec in experiment.arms.items()},
            "control": experiment.control,
            "restart": experiment.restart,
        },
        "arms": arms,
        "paired_vs_scratch": vs_scratch,
        **({"paired_vs_restart": vs_restart} if vs_restart else {}),
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


def restart_table(summary: dict) -> str:
    """Markdown: per continuing arm, what it starts with and its paired differences from the
    restarted arm (steps to threshold, AUC, final return); empty without that pairing."""
    pairs = summary.get("paired_vs_restart")
    if not pairs:
        return ""
    restart, threshold = summary["config"]["restart"], summary["threshold"]
    lines = [
        (f"| arm | normaliser | schedule count / step size at start | steps to {threshold:g} - "
         f"{restart} (95% CI) | AUC - {restart} (95% CI) | final - {restart} (95% CI) |"),
        "|---|---|---:|---:|---:|---:|",
    ]

    def ci(d: dict, fmt: str) -> str:
        return f"{d['mean']:{fmt}} ({d['ci95'][0]:{fmt}}, {d['ci95'][1]:{fmt}})"

    for arm in [restart, *pairs]:
        start = summary["arms"][arm].get("start", {})
        schedule = " / ".join(", ".join(f"{v:g}" for v in start.get(k, []))
                              for k in ("updates", "step_size"))
        p = pairs.get(arm)
        lines.append(
            f"| {arm} | {start.get('normalizer', '')} | {schedule} "
            f"| {ci(p['steps_to_threshold'], '+,.0f') if p else ''} "
            f"| {ci(p['auc'], '+.1f') if p else ''} | {ci(p['final'], '+.1f') if p else ''} |")
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
    summary = results.with_aggregates(
        summarise(experiment, returns, policies, time.perf_counter() - start))
    results.write(summary, args.out / experiment.name, xlabel="environment steps (0 = transplant)",
                  ylabel="greedy evaluation return",
                  title=f"PPO {experiment.name} ({summary['env']})")
    print(f"\n{experiment.name}: {args.seeds} seeds, {experiment.config.total_steps:,} steps per "
          f"phase, {summary['wall_s']:.0f}s\n\n{headline_table(summary)}\n\n"
          f"{restart_table(summary)}\n", flush=True)
    return summary, params
