"""A/A calibration on simulated members of the synthetic world: are the experiment statistics honest?

Why: an A/A test (both arms get the same experience) is the one experiment whose right answer is
known, so running it many times shows whether a pipeline's tests reject a true null as often as
they claim (Kohavi, Tang & Xu 2020, "Trustworthy Online Controlled Experiments", ch. 19). Part 7's
target: over 200 seeded replications, the fixed-horizon test and the group-sequential test read
after every simulated day each reject in 3% to 7% of them at alpha 0.05; CUPED cuts the variance of
plays per member by at least 20% without moving the estimate; a 52/48 split of 20,000 members is
flagged as a sample ratio mismatch.

- `aa_population`: members from producers/world (activity, tastes) and their daily plays.
- `calibrate`: the whole check as one JSON-ready dict (what `marquee experiment calibrate` prints).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

import numpy as np

from experiments.allocation import bucket
from experiments.sequential import (
    AA_REPLICATIONS,
    calibration_from_moments,
    information_from_correlations,
    look_correlations,
)
from experiments.spec import BUCKETS
from experiments.stats import ALPHA, check_alpha, cuped, cuped_adjusted, sample_ratio_mismatch
from marquee.settings import check_int, check_number
from producers.world.behaviour import DEFAULT_BEHAVIOUR
from producers.world.members import build_members
from producers.world.vocabulary import genre_vectors

START = date(2024, 3, 4)  # a Monday: the experiment's first day (weekday pattern below)
# The world's weekly rhythm (producers/world/simulator.py, Simulator._day_factor): Friday to
# Sunday busier than the working week. Indexed by weekday, Monday = 0.
WEEKDAY_FACTOR = np.array([0.92, 0.92, 0.92, 0.92, 1.2, 1.2, 1.2])
# The mSPRT's mixing sd as a multiple of the horizon's standard error of the difference: about
# the MDE of an 80%-power fixed test, (z_0.975 + z_0.8) = 2.8 standard errors (Johari et al. 2017
# advise tau near the effect worth detecting).
MSPRT_MDE_SE = 2.8
SRM_MEMBERS = 20_000
SRM_SPLIT = 0.52  # the injected control share (52/48)
CUPED_TARGET = 0.20  # the variance reduction Part 7 asks of CUPED


@dataclass(frozen=True)
class AAPopulation:
    """Simulated members' plays: the experiment's days, the pre-period total, enrolment and arm.

    `plays[i, d]`: member i's plays on experiment day d. `pre_plays[i]`: plays in the pre_days
    before day 0 (CUPED's covariate; 0 for members who joined since). `enrolled_day[i]`: the
    member's first active experiment day (a session), `days` if never active: members enter the
    experiment when first exposed, as serving logs them. `treatment[i]`: the arm, from the
    production hash (experiments.allocation.bucket) with this replication's salt.
    """

    member_id: np.ndarray
    plays: np.ndarray
    pre_plays: np.ndarray
    enrolled_day: np.ndarray
    treatment: np.ndarray

    @property
    def days(self) -> int:
        return self.plays.shape[1]

    def enrolled(self) -> np.ndarray:
        """(members, days): whether the member has entered the experiment by each day."""
        return self.enrolled_day[:, None] <= np.arange(self.days)[None, :]

    def cumulative(self) -> np.ndarray:
        """(members, days): plays from enrolment through each day (the metric at each look; no
        play precedes a member's first session, so it is the running sum of plays)."""
        return np.cumsum(self.plays, axis=1)

    def look_values(self, adjusted: bool = False) -> np.ndarray:
        """(members, days): the metric each look reads, NaN before enrolment; `adjusted`: CUPED-
        adjusted by the pre-period plays at each look over the members enrolled by then
        (stats.cuped_adjusted, as the analysis's sequential tests read it)."""
        values, enrolled = self.cumulative().astype(float), self.enrolled()
        if adjusted:
            for d in range(self.days):
                on = enrolled[:, d]
                values[on, d] = cuped_adjusted(values[on, d], self.pre_plays[on].astype(float),
                                               self.treatment[on])
        return np.where(enrolled, values, np.nan)

    def look_information(self, adjusted: bool = False) -> np.ndarray:
        """The group-sequential test's information times per look, from the correlation of
        consecutive looks of this population's own data (sequential.look_correlations)."""
        values = self.look_values(adjusted)
        return information_from_correlations(
            look_correlations(values[~self.treatment], values[self.treatment]))

    def look_moments(self, adjusted: bool = False) -> tuple[np.ndarray, ...]:
        """Per-arm mean, variance (ddof 1) and size of plays per enrolled member, per day (look)."""
        enrolled = self.enrolled()
        values = np.nan_to_num(self.look_values(adjusted))
        out = []
        for arm in (~self.treatment, self.treatment):
            mask = enrolled & arm[:, None]
            n = mask.sum(axis=0).astype(float)
            if np.any(n < 2):
                raise ValueError("members: too few to put 2 enrolled members in each arm on day 1")
            total = (values * mask).sum(axis=0)
            squares = (values ** 2 * mask).sum(axis=0)
            mean = total / n
            out += [mean, np.maximum(squares - n * mean ** 2, 0.0) / (n - 1), n]
        return tuple(out)


def aa_population(seed: int, *, members: int = 2000, days: int = 14, pre_days: int = 14,
                  lift: float = 0.0) -> AAPopulation:
    """Members of a synthetic world and their plays per day, over pre_days then days.

    The world's members (producers/world/members.py) bring persistent heterogeneity: a lognormal
    activity (expected sessions per day, sd 1.1 on the log scale) and how well the world's
    recommender knows their taste (cosine of the hidden taste and its estimate), which sets the
    chance a session's homepage leads to a play through behaviour.py's play logit
    (play_bias + play_match x match). Per member and day: sessions ~ Poisson(activity x weekday
    factor) once joined, plays ~ Binomial(max_plays_per_session x sessions, q_member). The same
    member is heavy or light in the pre-period and the experiment, which is what CUPED uses.
    `lift` multiplies the treatment arm's play probability by (1 + lift) during the experiment
    (0 for an A/A test). Vectorised: one (members, pre_days + days) draw.
    """
    seed = check_int("seed", seed, ge=0)
    members = check_int("members", members, ge=4)
    days = check_int("days", days, ge=1)
    pre_days = check_int("pre_days", pre_days, ge=0)
    lift = float(check_number("lift", lift, gt=-1))
    people = build_members(np.random.default_rng([seed, 2]), members, START, days,
                           genre_vectors(seed))
    rng = np.random.default_rng([seed, 7])
    b = DEFAULT_BEHAVIOUR
    match = np.sum(people.taste * people.est_taste, axis=1)
    q = 1 / (1 + np.exp(-(b.play_bias + b.play_match * match)))
    start_day = (START - date(1970, 1, 1)).days
    day = np.arange(-pre_days, days)
    weekday = (start_day + day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    joined = people.join_day[:, None] <= start_day + day[None, :]
    sessions = rng.poisson(people.activity[:, None] * WEEKDAY_FACTOR[weekday][None, :] * joined)
    member_id = np.arange(1, members + 1)
    treatment = np.array([bucket(m, f"aa-{seed}") for m in member_id.tolist()]) < BUCKETS // 2
    chance = np.broadcast_to(q[:, None], sessions.shape).copy()
    chance[:, pre_days:] *= np.where(treatment, 1 + lift, 1.0)[:, None]
    plays = rng.binomial(b.max_plays_per_session * sessions, np.minimum(chance, 1.0))
    active = sessions[:, pre_days:] > 0
    enrolled_day = np.where(active.any(axis=1), active.argmax(axis=1), days)
    return AAPopulation(member_id, plays[:, pre_days:], plays[:, :pre_days].sum(axis=1),
                        enrolled_day, treatment)


def cuped_at_horizon(population: AAPopulation):
    """CUPED of plays per member at the last day, pre-period plays as the covariate
    (members enrolled by then; stats.cuped)."""
    enrolled = population.enrolled_day < population.days
    y = population.cumulative()[:, -1].astype(float)
    x = population.pre_plays.astype(float)
    control, treatment = enrolled & ~population.treatment, enrolled & population.treatment
    return cuped(y[control], x[control], y[treatment], x[treatment])


def injected_srm(*, members: int = SRM_MEMBERS, control_share: float = SRM_SPLIT) -> dict:
    """A broken assignment injected on `members`: exactly control_share of them in control
    (52/48) against 50/50 weights. The SRM check (chi-square, p < 0.001) must flag it."""
    members = check_int("members", members, ge=2)
    control_share = float(check_number("control_share", control_share, gt=0, lt=1))
    control = round(members * control_share)
    result = sample_ratio_mismatch({"control": control, "treatment": members - control},
                                   {"control": 1, "treatment": 1})
    return {"members": members, "control_share": control_share,
            "counts": {"control": control, "treatment": members - control},
            "p_value": result.p_value, "threshold": result.threshold, "flagged": result.mismatch}


def _replication_seeds(seed: int, replications: int) -> list[int]:
    """Distinct, reproducible seeds per replication (calibrate(seed=0) and seed=1 share none)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(replications, np.uint32)]


def calibrate(replications: int = AA_REPLICATIONS, *, members: int = 2000, days: int = 14,
              seed: int = 0, alpha: float = ALPHA, pre_days: int = 14) -> dict:
    """The Part 7 A/A calibration as a JSON-ready dict.

    Keys: fixed / sequential / msprt / peeking, each with false_positive_rate, rejections, its
    exact binomial 95% interval and `ok` against the 0.03-0.07 band (sequential: the
    group-sequential O'Brien-Fleming-type test read after every day, with its boundaries; msprt:
    the always-valid test, conservative at daily looks; peeking: a daily t test, the failure the
    others prevent); cuped: the mean variance reduction of plays per member and the mean (with
    standard error) of adjusted - raw estimates over replications; srm: the injected 52/48 split
    and how many A/A replications the SRM check flagged; calibrated; elapsed_s.
    """
    started = time.perf_counter()
    replications = check_int("replications", replications, ge=1)
    seed = check_int("seed", seed, ge=0)
    alpha = check_alpha("alpha", alpha)
    moments, information, reductions, shifts, srm_flags = [], [], [], [], 0
    adjusted_moments, adjusted_information = [], []
    members = check_int("members", members, ge=4)
    days = check_int("days", days, ge=1)
    for rep_seed in _replication_seeds(seed, replications):
        population = aa_population(rep_seed, members=members, days=days, pre_days=pre_days)
        moments.append(population.look_moments())
        if days > 1:
            information.append(population.look_information())
        if pre_days:
            adjusted_moments.append(population.look_moments(adjusted=True))
            if days > 1:
                adjusted_information.append(population.look_information(adjusted=True))
        adjusted = cuped_at_horizon(population) if pre_days else None
        if adjusted is not None:
            reductions.append(adjusted.variance_reduction)
            shifts.append(adjusted.adjusted.difference - adjusted.unadjusted.difference)
        n_treatment = int(population.treatment.sum())
        srm_flags += sample_ratio_mismatch(
            {"control": members - n_treatment, "treatment": n_treatment},
            {"control": 1, "treatment": 1}).mismatch
    result, mixing_sd = _calibration(moments, information, alpha)
    report = result.as_dict()
    report["msprt"]["mixing_sd"] = mixing_sd
    cuped_report = _cuped_report(reductions, shifts)
    if adjusted_moments:
        # the same runs read as the analysis's verdict reads them by default: CUPED-adjusted looks
        adjusted, adjusted_sd = _calibration(adjusted_moments, adjusted_information, alpha)
        tests = adjusted.as_dict()
        cuped_report |= {"fixed": tests["fixed"], "sequential": tests["sequential"],
                         "msprt": tests["msprt"] | {"mixing_sd": adjusted_sd}}
        report["calibrated"] = bool(report["calibrated"] and tests["fixed"]["ok"] and tests["sequential"]["ok"])
    report |= {"members": members, "days": days, "pre_days": pre_days, "seed": seed,
               "cuped": cuped_report,
               "srm": injected_srm() | {"aa_flagged": int(srm_flags),
                                            "aa_flag_rate": srm_flags / replications}}
    report["elapsed_s"] = time.perf_counter() - started
    return report


def _calibration(moments: list, information: list, alpha: float):
    """Every test's rejections over the replications' per-look moments; (result, mSPRT mixing sd).
    The mixing sd comes from the design, not the outcome: MSPRT_MDE_SE times the typical horizon
    standard error of the difference."""
    grid = [np.stack([m[i] for m in moments]) for i in range(6)]
    horizon_se = np.sqrt(grid[1][:, -1] / grid[2][:, -1] + grid[4][:, -1] / grid[5][:, -1])
    mixing_sd = float(MSPRT_MDE_SE * np.median(horizon_se))
    result = calibration_from_moments(grid, mixing_sd=mixing_sd, alpha=alpha, spending="obrien_fleming",
                                      information=np.stack(information) if information else None)
    return result, mixing_sd


def _cuped_report(reductions: list[float], shifts: list[float]) -> dict:
    """Mean variance reduction and whether adjusted - raw averages to 0 (within 3 standard errors)."""
    if not reductions:
        return {"variance_reduction": None, "ok": False, "reason": "pre_days is 0: no covariate"}
    shifts_array = np.asarray(shifts)
    se = float(shifts_array.std(ddof=1) / np.sqrt(len(shifts))) if len(shifts) > 1 else float("nan")
    mean = float(shifts_array.mean())
    reduction = float(np.mean(reductions))
    unbiased = bool(np.isfinite(se) and abs(mean) <= 3 * se)
    return {"variance_reduction": reduction, "target": CUPED_TARGET,
            "adjusted_minus_raw_mean": mean, "adjusted_minus_raw_se": se,
            "ok": bool(reduction >= CUPED_TARGET and unbiased)}


__all__ = ["AAPopulation", "aa_population", "calibrate", "cuped_at_horizon", "injected_srm"]
