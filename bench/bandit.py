"""`marquee bench bandit`: the artwork policies learning online on the world's artwork environment
(bandits.env), cumulative expected regret against the oracle, and page selection latency.

Protocol (fixed, so numbers compare):
  * every policy meets the same impressions and the same reward draws on a seed (common random
    numbers): seed s builds the world with seed s (its members, catalog and simulated past) and
    seeds the session stream, the reward draws and the policy's own draws separately;
  * policies choose for a batch of `--batch` impressions at once (one select_page call: the
    batch is a page of different members) and learn from that batch's rewards before the next,
    as the nearline learner will; a policy's choices within a batch all use the same state, so
    this is exactly "update every `--batch` steps";
  * the members' histories are live (bandits.env.MemberHistory): each batch's impressions and
    plays join their counts before the next batch, as the learner's published counts do in
    serving; every policy starts from the same simulated past;
  * regret is expected (pseudo-)regret, sum over steps of p(best arm) - p(chosen arm), with the
    true probabilities from the environment (never shown to a policy);
  * hyperparameters are tuned on `--tuning-seeds` seeds disjoint from the reported ones (1000+i
    against 1..N), the same number of configurations for every tuned policy, full `--steps`;
    the configuration with the lowest mean regret is then run on the reported seeds;
  * selection latency: select_page for one member's page of 40 titles x 6 arms (real catalog
    titles with six artworks), each policy in its trained state; three blocks of
    `--timing-calls` calls per policy after a warm-up, the policies taking turns block by block;
    p99 (nearest rank) over all of a policy's calls, and each block's p99 beside it (on a
    machine shared with other jobs one block can catch a burst of their load; the load average
    before and after timing is recorded); BLAS limited
    to one thread for the whole run (on this shared 2-core machine threaded BLAS made the linear
    policies' products 40x slower);
  * ceilings (diagnostics that use the truth, not policies): on fresh impressions, the greedy
    choice of a ridge fitted in hindsight to the true probabilities of every arm (the best a
    linear model on these features can do) and the best fixed theme ranking (the best a
    context-free policy can do), both as regret per impression relative to uniform; and two
    oracles run like the policies on the reported seeds (posterior_oracle): told the true click
    model and the genre-explained part of each member's theme affinity, they learn only the
    personal rest, greedy on the posterior mean or Thompson: a reference (not a bound) for what
    the targets ask of a policy in `--steps` impressions;
  * history sensitivity: the reported seeds rerun with a longer observable past
    (`--sensitivity-history-days`, default 90 and 180 days against the default 30), settings as
    tuned, for uniform, epsilon-greedy and the contextual policies, with the same ceilings: the
    theme effect is per member, and how much of it a policy can find depends on how many of the
    member's plays it has seen.

Prints ONE JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bandits.context import FEATURE_DIM, member_vectors, page_features
from bandits.env import DEFAULT_WORLD, ArtworkWorld
from bandits.policies import Feedback, PageContext, Policy, make_policy
from bench.report import emit, progress
from producers.world.generate import WorldSettings
from producers.world.members import PERSONAL_THEME_SD, theme_lean
from producers.world.sampling import sigmoid

PAGE_TITLES, PAGE_ARMS = 40, 6
TUNING_SEED_BASE = 1000
CEILING_IMPRESSIONS = 20_000
TIMING_WARM_STEPS = 2_000
TIMING_BLOCKS = 3
RATIO_TO_EPSILON_GREEDY = 0.5
RATIO_TO_UNIFORM = 0.2
SELECTION_P99_LIMIT_MS = 1.0
CONTEXTUAL = ("linucb", "linear_ts")
ORACLES = {"posterior_greedy_oracle": False, "posterior_thompson_oracle": True}  # name -> sample

# Same budget for every tuned policy: six configurations each.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "uniform": [{}],
    "epsilon_greedy": [{"epsilon": e} for e in (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)],
    "bernoulli_ts": [{"prior_a": round(0.15 * s, 6), "prior_b": round(0.85 * s, 6)} for s in (1, 2, 5, 10, 50, 200)],
    "linucb": [{"alpha": a, "arm_model": m} for m, a in itertools.product(("disjoint", "shared"), (0.01, 0.03, 0.1))],
    "linear_ts": [{"scale": v, "arm_model": m} for m, v in itertools.product(("disjoint", "shared"), (0.003, 0.01, 0.03))],
}

_progress = progress("bandit")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one compact JSON line")
    parser.add_argument("--steps", type=int, default=50_000, help="impressions per policy and seed (default 50000)")
    parser.add_argument("--seeds", type=int, default=5, help="reported seeds 1..N (default 5)")
    parser.add_argument("--tuning-seeds", type=int, default=2,
                        help=f"tuning seeds {TUNING_SEED_BASE + 1}..{TUNING_SEED_BASE}+N (default 2)")
    parser.add_argument("--batch", type=int, default=100, help="impressions between policy updates (default 100)")
    parser.add_argument("--members", type=int, default=DEFAULT_WORLD.members,
                        help=f"world members (default {DEFAULT_WORLD.members})")
    parser.add_argument("--titles", type=int, default=DEFAULT_WORLD.titles,
                        help=f"world titles (default {DEFAULT_WORLD.titles})")
    parser.add_argument("--history-days", type=int, default=DEFAULT_WORLD.days,
                        help=f"days of simulated past behind members' histories (default {DEFAULT_WORLD.days})")
    parser.add_argument("--timing-calls", type=int, default=2000,
                        help="select_page calls timed per policy (default 2000)")
    parser.add_argument("--sensitivity-history-days", default="90,180",
                        help="comma-separated longer pasts to rerun the reported seeds on with the tuned "
                             "settings (uniform, epsilon-greedy and the contextual policies), or 'none' "
                             "(default 90,180)")


@dataclass(frozen=True)
class BenchSettings:
    steps: int
    seeds: int
    tuning_seeds: int
    batch: int
    timing_calls: int
    world: WorldSettings
    sensitivity_history_days: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("seeds", 1), ("tuning_seeds", 1), ("batch", 1), ("timing_calls", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        for days in self.sensitivity_history_days:
            if not isinstance(days, int) or days < 1:
                raise ValueError(f"sensitivity_history_days: expected integers >= 1, got {days!r}")
        if self.steps % self.batch:
            raise ValueError(f"steps: expected a multiple of batch ({self.batch}), got {self.steps}")
        if self.seeds < 2:
            _progress("one reported seed: regret_std is 0")


def run_policy(world: ArtworkWorld, name: str, params: dict[str, Any], steps: int, batch: int,
               seed: int) -> float:
    """Cumulative expected regret of one policy learning online over `steps` impressions."""
    return learn_online(world, make_policy(name, FEATURE_DIM, **params), steps, batch, seed)


def learn_online(world: ArtworkWorld, policy: Policy, steps: int, batch: int, seed: int) -> float:
    """Run `policy` on the seed's impressions, updating every `batch`; its cumulative regret."""
    stream = world.stream(np.random.default_rng([seed, 11]))
    reward_draws = np.random.default_rng([seed, 12])
    policy_draws = np.random.default_rng([seed, 13])
    history = world.history()  # live: what this policy shows and earns joins the members' counts
    regret = 0.0
    rows = np.arange(batch)
    for _ in range(steps // batch):
        shown = world.impressions(batch, stream, history)
        arm, _ = policy.choose(PageContext(shown.features, shown.mask, shown.arm_class), policy_draws)
        p = shown.probabilities[rows, arm]
        regret += float((shown.best - p).sum())
        reward = (reward_draws.random(batch) < p).astype(np.float64)
        policy.update(Feedback(shown.features[rows, arm], shown.arm_class[rows, arm], reward))
        history.observe(shown, arm, reward, world.title_genres)
    return regret


def world_for(settings: BenchSettings, seed: int) -> ArtworkWorld:
    return ArtworkWorld(replace(settings.world, seed=seed))


def tune(settings: BenchSettings, worlds: dict[int, ArtworkWorld]) -> dict[str, dict[str, Any]]:
    """Per policy: every configuration's mean regret over the tuning seeds, and the best one."""
    out = {}
    for name, grid in GRIDS.items():
        trials = []
        for params in grid:
            regrets = [run_policy(w, name, params, settings.steps, settings.batch, s) for s, w in worlds.items()]
            trials.append({"params": params, "regret_mean": round(statistics.fmean(regrets), 2)})
        best = min(trials, key=lambda t: t["regret_mean"])
        out[name] = {"params": best["params"], "trials": trials}
        _progress(f"tuned {name}: {best['params']} (regret {best['regret_mean']:.1f} on tuning seeds)")
    return out


def timing_page(world: ArtworkWorld, rng: np.random.Generator) -> PageContext:
    """One member's page: 40 catalog titles with six artworks each, in that member's context."""
    six = np.flatnonzero((world.arm_themes >= 0).sum(axis=1) == PAGE_ARMS)
    titles = rng.choice(six, PAGE_TITLES, replace=six.size < PAGE_TITLES)
    member = int(rng.integers(world.members.n))
    vector = member_vectors(world.genre_plays[member], world.theme_impressions[member],
                            world.theme_plays[member], int(world.members.devices[member, 0]), 20)
    features, mask = page_features(vector, world.arm_themes[titles], world.title_genres[titles])
    return PageContext(features, mask, world.arm_themes[titles])


def timing_blocks(policies: dict[str, Policy], page: PageContext, calls: int) -> dict[str, list[np.ndarray]]:
    """Per policy, TIMING_BLOCKS blocks of `calls` timed select_page calls (ms), the policies
    taking turns block by block so that load from other processes falls on all of them alike."""
    rngs = {name: np.random.default_rng(7) for name in policies}
    for name, policy in policies.items():
        for _ in range(50):  # warm-up
            policy.select_page(page, rngs[name])
    out: dict[str, list[np.ndarray]] = {name: [] for name in policies}
    for _ in range(TIMING_BLOCKS):
        for name, policy in policies.items():
            times = np.empty(calls)
            rng = rngs[name]
            for i in range(calls):
                began = time.perf_counter_ns()
                policy.select_page(page, rng)
                times[i] = (time.perf_counter_ns() - began) / 1e6
            out[name].append(times)
    return out


def nearest_rank(values: np.ndarray, q: float) -> float:
    ordered = np.sort(values)
    return float(ordered[max(0, int(np.ceil(q * ordered.size)) - 1)])


def ceilings(world: ArtworkWorld, seed: int) -> dict[str, float]:
    """Regret per impression relative to uniform of two hindsight oracles (see the docstring):
    fitted on the first half of fresh impressions, scored on the second."""
    shown = world.impressions(CEILING_IMPRESSIONS, world.stream(np.random.default_rng([seed, 14])))
    half = CEILING_IMPRESSIONS // 2
    mask, p, themes = shown.mask, shown.probabilities, shown.arm_class
    fit, test = slice(0, half), slice(half, None)
    uniform = float((shown.best[test] - p[test].sum(axis=1) / mask[test].sum(axis=1)).mean())

    def regret_of(scores: np.ndarray) -> float:
        chosen = np.argmax(np.where(mask[test], scores, -np.inf), axis=1)
        return float((shown.best[test] - p[test][np.arange(chosen.size), chosen]).mean()) / uniform

    x = shown.features[fit][mask[fit]]
    theta = np.linalg.solve(x.T @ x + np.eye(FEATURE_DIM), x.T @ p[fit][mask[fit]])
    theme_means = np.array([p[fit][mask[fit] & (themes[fit] == k)].mean() if np.any(mask[fit] & (themes[fit] == k))
                            else 0.0 for k in range(int(themes.max()) + 1)])
    return {"linear_hindsight": regret_of(shown.features[test] @ theta),
            "context_free_hindsight": regret_of(theme_means[np.maximum(themes[test], 0)])}


def posterior_oracle(world: ArtworkWorld, steps: int, batch: int, seed: int, *, sample: bool,
                     prior_mean: np.ndarray | None = None, prior_sd: float = PERSONAL_THEME_SD) -> float:
    """Cumulative regret of an oracle told everything but each member's personal theme noise:
    the true click model (every impression's logit before the theme term, the theme coefficient)
    and the part of the theme affinity the member's favourite genres explain (the prior mean;
    prior sd the world's personal sd). It learns the rest from what it shows, one Laplace step
    per impression of a (member, theme) Gaussian posterior, and picks by the posterior mean
    (sample=False: greedy) or a draw from it (Thompson). On the seed's impressions and reward
    draws, as learn_online (common random numbers). A reference for what the environment allows
    within `steps`, not a policy (no policy can read what it is told) and not a bound: greedy on
    the posterior mean is not Bayes-optimal (it ignores the value of exploring), so a policy
    could in principle do somewhat better than this oracle."""
    stream = world.stream(np.random.default_rng([seed, 11]))
    reward_draws = np.random.default_rng([seed, 12])
    draws = np.random.default_rng([seed, 13])
    history = world.history()  # the stream's titles follow the shown history, as for the policies
    mean = (theme_lean(world.members.favorites) if prior_mean is None else np.asarray(prior_mean, float)).copy()
    precision = np.full(mean.shape, prior_sd ** -2.0)
    coef = world.behaviour.play_theme
    rows, regret = np.arange(batch), 0.0
    for _ in range(steps // batch):
        shown = world.impressions(batch, stream, history)
        who, themes = shown.member[:, None], np.maximum(shown.arm_class, 0)
        belief = mean[who, themes]
        if sample:  # one draw per (impression, theme): two arms of one theme share it
            noise = draws.standard_normal((batch, mean.shape[1]))[rows[:, None], themes]
            belief = belief + noise / np.sqrt(precision[who, themes])
        arm = np.argmax(np.where(shown.mask, belief, -np.inf), axis=1)
        p = shown.probabilities[rows, arm]
        regret += float((shown.best - p).sum())
        reward = (reward_draws.random(batch) < p).astype(np.float64)
        history.observe(shown, arm, reward, world.title_genres)
        for member, theme, base, r in zip(shown.member.tolist(), themes[rows, arm].tolist(),
                                          shown.base_logit.tolist(), reward.tolist()):
            q = float(sigmoid(base + coef * mean[member, theme]))
            precision[member, theme] += coef * coef * q * (1.0 - q)
            mean[member, theme] += coef * (r - q) / precision[member, theme]
    return regret


def run(settings: BenchSettings) -> dict[str, Any]:
    began = time.perf_counter()
    tuning_worlds = {TUNING_SEED_BASE + i: world_for(settings, TUNING_SEED_BASE + i)
                     for i in range(1, settings.tuning_seeds + 1)}
    _progress(f"tuning on seeds {list(tuning_worlds)}")
    tuned = tune(settings, tuning_worlds)
    del tuning_worlds

    seeds = list(range(1, settings.seeds + 1))
    regrets: dict[str, list[float]] = {name: [] for name in GRIDS}
    bounds: list[dict[str, float]] = []
    oracles: dict[str, list[float]] = {name: [] for name in ORACLES}
    world = None
    for seed in seeds:
        world = world_for(settings, seed)
        for name in GRIDS:
            regrets[name].append(run_policy(world, name, tuned[name]["params"], settings.steps, settings.batch, seed))
        bounds.append(ceilings(world, seed))
        for name, sample in ORACLES.items():
            oracles[name].append(posterior_oracle(world, settings.steps, settings.batch, seed, sample=sample))
        _progress(f"seed {seed}: " + ", ".join(f"{n} {r[-1]:.0f}" for n, r in (regrets | oracles).items()))

    # Latency: each policy after a short online run on the last seed's world, one member's page.
    page = timing_page(world, np.random.default_rng(99))
    load = [round(os.getloadavg()[0], 2)]
    blocks = timing_blocks({name: trained(world, name, tuned[name]["params"], settings) for name in GRIDS},
                           page, settings.timing_calls)
    load.append(round(os.getloadavg()[0], 2))
    policies: dict[str, dict[str, Any]] = {}
    p99: dict[str, float] = {}
    uniform_mean = statistics.fmean(regrets["uniform"])
    for name in GRIDS:
        block_p99 = [nearest_rank(times, 0.99) for times in blocks[name]]
        pooled = np.concatenate(blocks[name])
        p99[name] = round(nearest_rank(pooled, 0.99), 4)
        values = regrets[name]
        policies[name] = {
            "params": tuned[name]["params"],
            "regret_mean": round(statistics.fmean(values), 2),
            "regret_std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "regret_per_seed": [round(v, 2) for v in values],
            "regret_vs_uniform": round(statistics.fmean(values) / uniform_mean, 4),
            "selection_p50_ms": round(nearest_rank(pooled, 0.5), 4),
            "selection_p99_ms": p99[name],
            "selection_p99_ms_per_block": [round(v, 4) for v in block_p99],
            "tuning": tuned[name]["trials"],
        }
    p99["max"] = max(p99.values())

    eps = policies["epsilon_greedy"]["regret_mean"]
    ratios, meets = {}, {}
    for name in CONTEXTUAL:
        mean = policies[name]["regret_mean"]
        ratios[f"{name}_vs_epsilon_greedy"] = round(mean / eps, 4)
        ratios[f"{name}_vs_uniform"] = round(mean / uniform_mean, 4)
        meets[f"{name}_regret_le_{RATIO_TO_EPSILON_GREEDY}x_epsilon_greedy"] = mean <= RATIO_TO_EPSILON_GREEDY * eps
        meets[f"{name}_regret_le_{RATIO_TO_UNIFORM}x_uniform"] = mean <= RATIO_TO_UNIFORM * uniform_mean
    meets["selection_p99_under_1ms"] = p99["max"] < SELECTION_P99_LIMIT_MS

    sensitivity = {str(days): history_sensitivity(settings, days, seeds, tuned)
                   for days in settings.sensitivity_history_days}

    w = settings.world
    return {
        "benchmark": "bandit",
        "settings": {
            "steps": settings.steps, "batch": settings.batch, "seeds": seeds,
            "tuning_seeds": [TUNING_SEED_BASE + i for i in range(1, settings.tuning_seeds + 1)],
            "configurations_per_policy": {n: len(g) for n, g in GRIDS.items()},
            "world": {"members": w.members, "titles": w.titles, "history_days": w.days, "seed": "= run seed"},
            "feature_dim": FEATURE_DIM, "timing_page": f"{PAGE_TITLES} titles x {PAGE_ARMS} arms, one member",
            "timing_calls": settings.timing_calls, "timing_blocks": TIMING_BLOCKS, "blas_threads": 1,
            "selection_p99": "nearest rank over every timed call of the policy (all blocks)",
            "load_average_1min_around_timing": load,
            "regret": "expected pseudo-regret, sum of p(best) - p(chosen) over steps, against the oracle",
        },
        "policies": policies,
        "selection_p99_ms": p99,
        "ratios": ratios,
        "ceilings_vs_uniform": {k: round(statistics.fmean(b[k] for b in bounds), 4) for k in bounds[0]},
        "oracles": {name: {"regret_mean": round(statistics.fmean(v), 2),
                           "regret_std": round(statistics.stdev(v), 2) if len(v) > 1 else 0.0,
                           "regret_vs_uniform": round(statistics.fmean(v) / uniform_mean, 4),
                           "regret_vs_epsilon_greedy": round(statistics.fmean(v) / eps, 4)}
                    for name, v in oracles.items()},
        "targets": {
            f"{n}_vs_epsilon_greedy": f"<= {RATIO_TO_EPSILON_GREEDY} (mean regret / best epsilon-greedy's)" for n in CONTEXTUAL
        } | {f"{n}_vs_uniform": f"<= {RATIO_TO_UNIFORM} (mean regret / uniform's)" for n in CONTEXTUAL}
          | {"selection_p99_ms": f"< {SELECTION_P99_LIMIT_MS} for every policy"},
        "meets_targets": meets,
        "history_sensitivity": sensitivity,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }


SENSITIVITY_POLICIES = ("uniform", "epsilon_greedy", *CONTEXTUAL)


def history_sensitivity(settings: BenchSettings, days: int, seeds: list[int],
                        tuned: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The reported seeds again with a longer observable past (more history per member), the
    settings tuned on the default past: how the contextual policies' edge grows with evidence."""
    regrets: dict[str, list[float]] = {name: [] for name in SENSITIVITY_POLICIES}
    bounds = []
    for seed in seeds:
        world = ArtworkWorld(replace(settings.world, seed=seed, days=days))
        for name in SENSITIVITY_POLICIES:
            regrets[name].append(run_policy(world, name, tuned[name]["params"], settings.steps, settings.batch, seed))
        bounds.append(ceilings(world, seed))
    means = {name: statistics.fmean(v) for name, v in regrets.items()}
    _progress(f"history {days} days: " + ", ".join(f"{n} {m:.0f}" for n, m in means.items()))
    out: dict[str, Any] = {f"{n}_regret_mean": round(m, 2) for n, m in means.items()}
    for name in CONTEXTUAL:
        out[f"{name}_vs_epsilon_greedy"] = round(means[name] / means["epsilon_greedy"], 4)
        out[f"{name}_vs_uniform"] = round(means[name] / means["uniform"], 4)
    out["ceilings_vs_uniform"] = {k: round(statistics.fmean(b[k] for b in bounds), 4) for k in bounds[0]}
    return out


def trained(world: ArtworkWorld, name: str, params: dict[str, Any], settings: BenchSettings) -> Policy:
    """A policy after a short online run (so the timing sees a learned state, not the prior)."""
    policy = make_policy(name, FEATURE_DIM, **params)
    learn_online(world, policy, min(TIMING_WARM_STEPS, settings.steps) // settings.batch * settings.batch,
                 settings.batch, seed=0)
    return policy


def _days(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"sensitivity_history_days: expected comma-separated integers or 'none', got {text!r}") from None


def cli_main(args: argparse.Namespace) -> int:
    try:
        settings = BenchSettings(
            steps=args.steps, seeds=args.seeds, tuning_seeds=args.tuning_seeds, batch=args.batch,
            timing_calls=args.timing_calls,
            world=WorldSettings(members=args.members, titles=args.titles, days=args.history_days),
            sensitivity_history_days=_days(args.sensitivity_history_days),
        )
    except ValueError as exc:
        _progress(f"error: {exc}")
        return 2
    with threadpool_limits(limits=1, user_api="blas"):
        result = run(settings)
    return emit(result, args.json)
