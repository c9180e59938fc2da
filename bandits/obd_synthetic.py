"""Synthetic campaigns in the Open Bandit Dataset's layout, with a known true value.

Why: on the real samples the only check of an estimator (or of the rule that picks one) is the
BTS logs' observed click rate, itself ~15% noise at ~45 clicks. Here the click model is known, so
a rule's error against the true value, and its interval's coverage, can be counted over seeded
replications on data the rule's design never saw.

The model (per scenario): a click's logit is base + position + item + user group effects, all
drawn from the seed; the logging policy is uniform over items; the evaluation policy ("bts") is
context-free per position, softmax(concentration x item effect + noise), so it leans toward the
items that click more, as a Thompson sampler does. The true value is exact (the user groups and
positions are discrete): sum over group, position, item of P(group) P(position) pi(item|position)
q(group, item, position). Files are written exactly as `bandits.obd.read_campaign_logs` reads
the real ones (random/NAME/NAME.csv, bts/NAME/NAME.csv, random/NAME/item_context.csv).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, softmax

N_USER_FEATURES, USER_VALUES = 3, 4
WEEK_S = 7 * 86_400
START = pd.Timestamp("2019-11-24", tz="UTC")


@dataclass(frozen=True)
class Scenario:
    """How strong each effect is and how far the evaluation policy leans toward good items."""

    name: str
    base_rate: float        # click rate at zero effects
    item_std: float         # std of the items' logit effects
    user_std: float         # std of each user feature value's logit effect
    concentration: float    # evaluation policy: softmax(concentration x item effect + N(0, 1))
    n_items: int = 80
    n_positions: int = 3
    rows: int = 10_000      # rows per policy's log (the real samples have 10,000)

    def __post_init__(self) -> None:
        if not 0 < self.base_rate < 1:
            raise ValueError(f"base_rate: must be in (0, 1), got {self.base_rate}")
        for name in ("item_std", "user_std", "concentration"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.n_items < 2 or self.n_positions < 1 or self.rows < 10:
            raise ValueError("n_items >= 2, n_positions >= 1 and rows >= 10 are required")


@dataclass(frozen=True)
class SyntheticCampaign:
    root: Path
    name: str
    true_value: float       # the evaluation policy's expected click rate
    logging_value: float    # the uniform policy's


def write_campaign(root: str | Path, scenario: Scenario, seed: int, name: str = "synthetic") -> SyntheticCampaign:
    """Draw one replication of `scenario` with `seed` and write it under root in the OBD layout."""
    rng = np.random.default_rng([seed, 17])
    s = scenario
    base = np.log(s.base_rate / (1 - s.base_rate))
    item_effect = s.item_std * rng.standard_normal(s.n_items)
    position_effect = np.linspace(0.15, -0.15, s.n_positions)
    user_effect = s.user_std * rng.standard_normal((N_USER_FEATURES, USER_VALUES))
    user_p = rng.dirichlet(np.full(USER_VALUES, 3.0), N_USER_FEATURES)
    policy = softmax(s.concentration * item_effect[None, :] + rng.standard_normal((s.n_positions, s.n_items)),
                     axis=1)
    # q(group, position, item): groups are every combination of the user features' values.
    grid = np.stack(np.meshgrid(*[np.arange(USER_VALUES)] * N_USER_FEATURES, indexing="ij"), -1).reshape(-1, N_USER_FEATURES)
    group_p = np.prod(user_p[np.arange(N_USER_FEATURES), grid], axis=1)
    group_effect = user_effect[np.arange(N_USER_FEATURES), grid].sum(axis=1)
    q = expit(base + group_effect[:, None, None] + position_effect[None, :, None] + item_effect[None, None, :])
    true_value = float(np.einsum("g,gpi,pi->", group_p, q, policy) / s.n_positions)
    logging_value = float(np.einsum("g,gpi->", group_p, q) / (s.n_positions * s.n_items))

    root = Path(root)
    for label, probs in (("random", None), ("bts", policy)):
        users = np.stack([rng.choice(USER_VALUES, s.rows, p=user_p[f]) for f in range(N_USER_FEATURES)], 1)
        position = rng.integers(0, s.n_positions, s.rows)
        if probs is None:
            item = rng.integers(0, s.n_items, s.rows)
            propensity = np.full(s.rows, 1.0 / s.n_items)
        else:
            item = (rng.random((s.rows, 1)) > probs[position].cumsum(axis=1)).sum(axis=1).clip(max=s.n_items - 1)
            propensity = probs[position, item]
        logit = base + user_effect[np.arange(N_USER_FEATURES), users].sum(axis=1) + position_effect[position] + item_effect[item]
        seconds = np.sort(rng.random(s.rows)) * WEEK_S
        frame = pd.DataFrame({
            "timestamp": (START + pd.to_timedelta(seconds, unit="s")).astype(str),
            "item_id": item,
            "position": position + 1,
            "click": (rng.random(s.rows) < expit(logit)).astype(int),
            "propensity_score": propensity,
        })
        for f in range(N_USER_FEATURES):
            frame[f"user_feature_{f}"] = [f"v{f}_{v}" for v in users[:, f]]
        affinity = rng.poisson(0.05, (s.rows, s.n_items))  # noise: the click model never reads it
        frame = pd.concat([frame, pd.DataFrame(affinity, columns=[f"user-item_affinity_{j}" for j in range(s.n_items)])],
                          axis=1)
        folder = root / label / name
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / f"{name}.csv")
        if label == "random":
            pd.DataFrame({"item_id": range(s.n_items),
                          "item_feature_0": rng.standard_normal(s.n_items),
                          "item_feature_1": rng.choice(["a", "b", "c"], s.n_items)}).to_csv(folder / "item_context.csv")
    return SyntheticCampaign(root, name, true_value, logging_value)
