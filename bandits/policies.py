"""Artwork bandit policies behind one contract: choose for a whole page at once, learn from batches.

    select_page(page, rng_or_seed) -> list[Choice]   one Choice per title: arm, propensity, version
    update(batch)                                    a Feedback batch of (context, arm class, reward)
    to_state() / from_state(state)                   plain JSON values + numpy arrays, no pickle

What an arm is. A title's arms are its artwork variants (2-6 of them, padded to the page's widest
title with a mask). No policy keeps a model per artwork: each artwork belongs to an *arm class*,
its theme (`page.arm_class`), and what is learnt serves every title. A title's artwork is seen a
handful of times; a theme is seen on every page, so "this member plays dark artwork" learnt on
one title transfers to the next title's dark artwork. The context-free policies keep one
statistic per class. The linear ones (`arm_model`) keep either one ridge model per class
("disjoint", Li et al.'s disjoint LinUCB, the default) or one model for all arms ("shared"),
which tells arms apart only through the context's arm columns (theme one-hot, member theme
history x arm theme; bandits.context). Measured on bandits.env (bench bandit), "shared" learns
far faster: the part of the reward common to a title's arms (taste, popularity, hour) is learnt
once instead of once per theme, and it is what the benchmark's tuning picks. A title's variants
have distinct themes in the world's catalog; where two arms of a title fall under one model,
Thompson sampling draws their scores jointly.

The policies: uniform random; epsilon-greedy on each class's mean reward (context-free, today's
serving policy generalised to classes); LinUCB (ridge regression, upper confidence bound); linear
Thompson sampling (the same ridge posterior, sampled); Bernoulli Thompson sampling on each
class's play rate (context-free, Beta posteriors).

Propensities are the exact probability, under the policy's own randomisation, that it chose the
arm it chose. Every policy first computes `probabilities(page, rng)`, the distribution over each
title's arms it draws from (rows sum to 1; also what off-policy evaluation needs of a target
policy), then draws the arm from it by inverse CDF: closed form for uniform, epsilon-greedy and
LinUCB (exact ties split evenly); for the two Thompson samplers the share of `draws` posterior
draws (default 128) each arm won, so drawing from it is drawing the winner of one uniformly
picked posterior draw. That is the policy actually run (Monte-Carlo Thompson sampling): the
logged propensity is exact for it given the draws, which do not depend on the reward, and
approximates pure Thompson sampling to about 1/sqrt(draws). Every draw comes from the Generator
(or seed) passed in: same seed, same state, same page -> same choices and propensities.

Selection is vectorised over the page. The linear policies keep each model's inverse design
matrix, refreshed at `update`, so selection is matrix products only (run BLAS single-threaded:
on a shared 2-core machine threaded BLAS made a 240 x 87 product 40x slower).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from marquee.schema import ARTWORK_THEMES

DEFAULT_CLASSES = len(ARTWORK_THEMES)
DEFAULT_DRAWS = 128


@dataclass(frozen=True)
class PageContext:
    """Every title's candidate arms on one page: features (titles, max_arms, dim), mask (titles,
    max_arms) True for a real arm, arm_class (titles, max_arms) int, the class of each real arm.
    A batch of impressions of different members is a page too: nothing here is per member."""

    features: np.ndarray
    mask: np.ndarray
    arm_class: np.ndarray

    def __post_init__(self) -> None:
        features = np.asarray(self.features, np.float64)
        mask = np.asarray(self.mask, bool)
        arm_class = np.asarray(self.arm_class, np.int64)
        if features.ndim != 3:
            raise ValueError(f"features: expected (titles, max_arms, dim), got shape {features.shape}")
        if mask.shape != features.shape[:2]:
            raise ValueError(f"mask: expected shape {features.shape[:2]}, got {mask.shape}")
        if arm_class.shape != features.shape[:2]:
            raise ValueError(f"arm_class: expected shape {features.shape[:2]}, got {arm_class.shape}")
        if not mask.any(axis=1).all():
            raise ValueError("mask: every title needs at least one arm")
        if np.any(arm_class[mask] < 0):
            raise ValueError("arm_class: a real arm has a negative class")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "arm_class", np.where(mask, arm_class, 0))

    @property
    def n_titles(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[2]


class Choice(NamedTuple):
    """One title's pick: the arm's index among the title's arms, the probability the policy had
    of picking it, and the policy version that picked it. (A NamedTuple: a frozen dataclass
    cost 1.4 us a title, a third of a whole page's selection.)"""

    arm: int
    propensity: float
    version: int


@dataclass(frozen=True)
class Feedback:
    """A batch of outcomes: the shown arm's context row x (n, dim), its class arm (n,), reward (n,)."""

    x: np.ndarray
    arm: np.ndarray
    reward: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, np.float64)
        arm = np.asarray(self.arm, np.int64)
        reward = np.asarray(self.reward, np.float64)
        if x.ndim != 2:
            raise ValueError(f"x: expected (n, dim), got shape {x.shape}")
        if arm.shape != (x.shape[0],):
            raise ValueError(f"arm: expected shape ({x.shape[0]},), got {arm.shape}")
        if reward.shape != (x.shape[0],):
            raise ValueError(f"reward: expected shape ({x.shape[0]},), got {reward.shape}")
        if not (np.isfinite(x).all() and np.isfinite(reward).all()):
            raise ValueError("x, reward: expected finite values")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "arm", arm)
        object.__setattr__(self, "reward", reward)


def as_generator(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool) and rng_or_seed >= 0:
        return np.random.default_rng(int(rng_or_seed))
    raise ValueError(f"rng_or_seed: expected a numpy Generator or a seed >= 0, got {rng_or_seed!r}")


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _sample(probabilities: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the column drawn from the row's distribution by inverse CDF at u in [0, 1)
    (the first column whose cumulative probability exceeds u: never a zero-probability one)."""
    cumulative = np.cumsum(probabilities, axis=1)
    return np.argmax(cumulative > (u * cumulative[:, -1])[:, None], axis=1)


def _best_split(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, probability 1 on the best masked score, split evenly over exact ties."""
    scores = np.where(mask, scores, -np.inf)
    tied = mask & (scores >= scores.max(axis=1, keepdims=True))
    return tied / tied.sum(axis=1, keepdims=True)


class Policy:
    """The contract every artwork policy keeps (see the module docstring)."""

    name: ClassVar[str]
    _params: ClassVar[tuple[str, ...]] = ()  # constructor parameters kept in the state
    _arrays: ClassVar[tuple[str, ...]] = ()  # learned arrays kept in the state

    def __init__(self, dim: int, n_classes: int = DEFAULT_CLASSES) -> None:
        self.dim = _count("dim", dim)
        self.n_classes = _count("n_classes", n_classes)
        self.version = 0

    # -- the contract ----------------------------------------------------------------------

    def select_page(self, page: PageContext, rng_or_seed: np.random.Generator | int) -> list[Choice]:
        arms, propensities = self.choose(page, rng_or_seed)
        version = self.version
        return [Choice(a, p, version) for a, p in zip(arms.tolist(), propensities.tolist())]

    def choose(self, page: PageContext, rng_or_seed: np.random.Generator | int) -> tuple[np.ndarray, np.ndarray]:
        """select_page as arrays: the arm index (titles,) and its propensity (titles,)."""
        rng = as_generator(rng_or_seed)
        probabilities = self.probabilities(page, rng)
        arm = _sample(probabilities, rng.random(page.n_titles))
        return arm, probabilities[np.arange(page.n_titles), arm]

    def probabilities(self, page: PageContext, rng_or_seed: np.random.Generator | int) -> np.ndarray:
        """(titles, max_arms): the distribution over each title's arms that the policy draws its
        choice from (for Thompson sampling, given its posterior draws, which it takes from
        rng_or_seed). Rows sum to 1, padding has 0. What off-policy evaluation needs of a
        target policy, and what `choose` samples from."""
        if page.dim != self.dim:
            raise ValueError(f"features: expected dim {self.dim}, got {page.dim}")
        if page.arm_class.max() >= self.n_classes:
            raise ValueError(f"arm_class: expected classes < {self.n_classes}, got {page.arm_class.max()}")
        return self._probabilities(page, as_generator(rng_or_seed))

    def update(self, batch: Feedback) -> None:
        if batch.x.shape[1] != self.dim:
            raise ValueError(f"x: expected dim {self.dim}, got {batch.x.shape[1]}")
        if batch.arm.size and (batch.arm.min() < 0 or batch.arm.max() >= self.n_classes):
            raise ValueError(f"arm: expected classes in [0, {self.n_classes}), got {batch.arm.min()}..{batch.arm.max()}")
        self._learn(batch)
        self.version += 1

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"policy": self.name, "version": self.version, "dim": self.dim,
                                 "n_classes": self.n_classes}
        state.update({p: getattr(self, p) for p in self._params})
        state.update({a: getattr(self, a).copy() for a in self._arrays})
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Policy:
        if state.get("policy") != cls.name:
            raise ValueError(f"policy: expected {cls.name!r}, got {state.get('policy')!r}")
        policy = cls(dim=state["dim"], n_classes=state["n_classes"], **{p: state[p] for p in cls._params})
        for a in cls._arrays:
            value = np.asarray(state[a], np.float64)
            expected = getattr(policy, a).shape
            if value.shape != expected:
                raise ValueError(f"{a}: expected shape {expected}, got {value.shape}")
            setattr(policy, a, value.copy())
        version = state["version"]
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
            raise ValueError(f"version: expected an integer >= 0, got {version!r}")
        policy.version = int(version)
        policy._refresh()
        return policy

    # -- for subclasses ----------------------------------------------------------------------

    def _probabilities(self, page: PageContext, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _learn(self, batch: Feedback) -> None:
        pass

    def _refresh(self) -> None:
        """Recompute what is derived from the learned arrays (after from_state)."""


class UniformPolicy(Policy):
    """Each of a title's arms with equal probability: the logging policy of the world's own log."""

    name = "uniform"

    def _probabilities(self, page, rng):
        return page.mask / page.mask.sum(axis=1, keepdims=True)


class EpsilonGreedyPolicy(Policy):
    """The class with the best mean reward with probability 1 - epsilon (ties split evenly), a
    uniformly random arm otherwise. Untried classes have mean 0, like deployments/artwork.py."""

    name = "epsilon_greedy"
    _params = ("epsilon",)
    _arrays = ("reward_sum", "pulls")

    def __init__(self, dim: int, n_classes: int = DEFAULT_CLASSES, epsilon: float = 0.1) -> None:
        super().__init__(dim, n_classes)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.number)) or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon: expected a number in [0, 1], got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.reward_sum = np.zeros(self.n_classes)
        self.pulls = np.zeros(self.n_classes)

    def _probabilities(self, page, rng):
        means = (self.reward_sum / np.maximum(self.pulls, 1.0))[page.arm_class]
        explore = page.mask / page.mask.sum(axis=1, keepdims=True)
        return self.epsilon * explore + (1.0 - self.epsilon) * _best_split(means, page.mask)

    def _learn(self, batch):
        np.add.at(self.reward_sum, batch.arm, batch.reward)
        np.add.at(self.pulls, batch.arm, 1.0)


ARM_MODELS = ("disjoint", "shared")


class _RidgePerClass(Policy):
    """Ridge regressions of reward on the context: A = ridge I + X'X, b = X'r. With
    arm_model="disjoint" one per arm class (Li et al.'s disjoint model, classes = themes); with
    "shared" one for every arm, which then tells arms apart only through the context's
    arm-specific columns (theme one-hot, member history x arm theme). Keeps A^-1 and
    theta = A^-1 b, refreshed at every update, for selection."""

    _arrays = ("design", "response")

    def __init__(self, dim: int, n_classes: int, ridge: float, arm_model: str) -> None:
        super().__init__(dim, n_classes)
        self.ridge = _positive("ridge", ridge)
        if arm_model not in ARM_MODELS:
            raise ValueError(f"arm_model: expected one of {', '.join(ARM_MODELS)}, got {arm_model!r}")
        self.arm_model = arm_model
        models = self.n_classes if arm_model == "disjoint" else 1
        self.design = np.repeat(self.ridge * np.eye(self.dim)[None], models, axis=0)
        self.response = np.zeros((models, self.dim))
        self._refresh()

    def _model_of(self, arm_class: np.ndarray) -> np.ndarray:
        return arm_class if self.arm_model == "disjoint" else np.zeros_like(arm_class)

    def _refresh(self, models: np.ndarray | None = None) -> None:
        if models is None:
            self._inverse = np.linalg.inv(self.design)
            self._theta = np.einsum("kij,kj->ki", self._inverse, self.response)
            return
        self._inverse[models] = np.linalg.inv(self.design[models])
        self._theta[models] = np.einsum("kij,kj->ki", self._inverse[models], self.response[models])

    def _learn(self, batch):
        model = self._model_of(batch.arm)
        touched = np.unique(model)
        for k in touched.tolist():
            rows = model == k
            x = batch.x[rows]
            self.design[k] += x.T @ x
            self.response[k] += x.T @ batch.reward[rows]
        if touched.size:
            self._refresh(touched)

    def _mean_and_spread(self, page: PageContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per (title, arm) slot, padding included (zero rows): x.theta, x' A^-1 x, and A^-1 x
        (for covariances); one matrix product per model present on the page."""
        n, width, dim = page.features.shape
        x = page.features.reshape(n * width, dim)
        if self.arm_model == "shared":
            projected = x @ self._inverse[0]
            mean = x @ self._theta[0]
        else:
            models = page.arm_class.reshape(-1)
            mean = np.empty(n * width)
            projected = np.empty_like(x)
            for k in np.unique(models).tolist():
                rows = np.flatnonzero(models == k)
                xk = x[rows]
                projected[rows] = xk @ self._inverse[k]
                mean[rows] = xk @ self._theta[k]
        variance = np.maximum(np.einsum("ij,ij->i", projected, x), 0.0)
        return mean.reshape(n, width), variance.reshape(n, width), projected.reshape(n, width, dim)


class LinUCBPolicy(_RidgePerClass):
    """LinUCB (Li et al. 2010): score = x.theta + alpha sqrt(x' A^-1 x) under the arm's model;
    the best score is chosen, exact ties split evenly (propensity 1 / ties)."""

    name = "linucb"
    _params = ("alpha", "ridge", "arm_model")

    def __init__(self, dim: int, n_classes: int = DEFAULT_CLASSES, alpha: float = 1.0, ridge: float = 1.0,
                 arm_model: str = "disjoint") -> None:
        self.alpha = _positive("alpha", alpha)
        super().__init__(dim, n_classes, ridge, arm_model)

    def _probabilities(self, page, rng):
        mean, variance, _ = self._mean_and_spread(page)
        return _best_split(mean + self.alpha * np.sqrt(variance), page.mask)


def _win_shares(scores: np.ndarray) -> np.ndarray:
    """From sampled scores (max_arms, titles, draws), padding at -inf: per title the share of
    draws each arm won, (titles, max_arms). Choosing from these shares is choosing the winner of
    one uniformly picked draw."""
    width, n, draws = scores.shape
    winners = np.zeros((n, draws), np.int64)
    best = scores[0]
    for a in range(1, width):  # an argmax over a few arms, on contiguous titles x draws slices
        better = scores[a] > best
        winners = np.where(better, a, winners)
        best = np.where(better, scores[a], best)
    wins = np.bincount((winners + width * np.arange(n)[:, None]).ravel(), minlength=n * width)
    return wins.reshape(n, width) / draws


class LinearTSPolicy(_RidgePerClass):
    """Linear Thompson sampling (Agrawal and Goyal 2013) on the ridge posterior
    theta ~ N(A^-1 b, scale^2 A^-1) of each model. Arm scores x.theta are drawn directly in score
    space: jointly Gaussian per title, arms under one model correlated through its shared theta
    (independent, a diagonal, when every arm of a title has its own model). One set of `draws`
    standard normal vectors serves the page, shaped by each title's own posterior; each title
    picks its own draw, so its propensity is exact for it as in the module docstring."""

    name = "linear_ts"
    _params = ("scale", "ridge", "draws", "arm_model")

    def __init__(self, dim: int, n_classes: int = DEFAULT_CLASSES, scale: float = 1.0, ridge: float = 1.0,
                 draws: int = DEFAULT_DRAWS, arm_model: str = "disjoint") -> None:
        self.scale = _positive("scale", scale)
        self.draws = _count("draws", draws)
        super().__init__(dim, n_classes, ridge, arm_model)

    def _probabilities(self, page, rng):
        n, width = page.mask.shape
        mean, variance, projected = self._mean_and_spread(page)
        mu = np.where(page.mask, mean, -np.inf).T[:, :, None]
        noise = rng.standard_normal((width, self.draws))  # shared by the page's titles
        model = np.where(page.mask, self._model_of(page.arm_class), -1 - np.arange(width)[None, :])
        if _distinct_per_row(model):
            sd = np.where(page.mask, self.scale * np.sqrt(variance), 0.0)
            scores = mu + sd.T[:, :, None] * noise[:, None, :]
        else:
            factor = self._cholesky(page, projected, model)  # (n, width, width), lower
            scores = mu + (factor.transpose(1, 0, 2).reshape(width * n, width) @ noise).reshape(width, n, self.draws)
        return _win_shares(scores)

    def _cholesky(self, page: PageContext, projected: np.ndarray, model: np.ndarray) -> np.ndarray:
        """Per title, the Cholesky factor of its arms' score covariance scale^2 x_a' A^-1 x_b
        (zero across models; padding gets unit variance, its score stays -inf)."""
        width = page.mask.shape[1]
        covariance = np.matmul(projected, page.features.transpose(0, 2, 1))
        same = model[:, :, None] == model[:, None, :]
        covariance = self.scale ** 2 * np.where(same, covariance, 0.0)
        diagonal = np.diagonal(covariance, axis1=1, axis2=2)
        jitter = 1e-9 * np.where(page.mask, diagonal, 0.0).max(axis=1, keepdims=True) + 1e-18
        covariance = covariance + np.eye(width)[None] * np.where(page.mask, jitter, 1.0)[:, None, :]
        return np.linalg.cholesky(covariance)


def _distinct_per_row(model: np.ndarray) -> bool:
    """True when no title has two arms under the same model (padding holds distinct negatives)."""
    ordered = np.sort(model, axis=1)
    return not np.any(ordered[:, 1:] == ordered[:, :-1])


class BernoulliTSPolicy(Policy):
    """Context-free Thompson sampling: a Beta(prior_a + plays, prior_b + misses) play rate per
    arm class. One set of `draws` class draws serves the whole page (a title's propensity is its
    own share of wins over them; titles' picks are correlated through the shared draws, which
    changes nothing per title). Rewards must lie in [0, 1]."""

    name = "bernoulli_ts"
    _params = ("prior_a", "prior_b", "draws")
    _arrays = ("successes", "failures")

    def __init__(self, dim: int, n_classes: int = DEFAULT_CLASSES, prior_a: float = 1.0, prior_b: float = 1.0,
                 draws: int = DEFAULT_DRAWS) -> None:
        super().__init__(dim, n_classes)
        self.prior_a = _positive("prior_a", prior_a)
        self.prior_b = _positive("prior_b", prior_b)
        self.draws = _count("draws", draws)
        self.successes = np.zeros(self.n_classes)
        self.failures = np.zeros(self.n_classes)

    def _probabilities(self, page, rng):
        a = self.prior_a + self.successes
        b = self.prior_b + self.failures
        # Beta(a, b) draws as gamma ratios, (classes, draws); float32 halves the gamma cost.
        ga = rng.standard_gamma(np.broadcast_to(a.astype(np.float32), (self.draws, self.n_classes)), dtype=np.float32)
        gb = rng.standard_gamma(np.broadcast_to(b.astype(np.float32), (self.draws, self.n_classes)), dtype=np.float32)
        rates = (ga / (ga + gb)).T
        return _win_shares(np.where(page.mask.T[:, :, None], rates[page.arm_class.T], -np.inf))

    def _learn(self, batch):
        if batch.reward.size and (batch.reward.min() < 0 or batch.reward.max() > 1):
            raise ValueError("reward: expected values in [0, 1] for Bernoulli Thompson sampling")
        np.add.at(self.successes, batch.arm, batch.reward)
        np.add.at(self.failures, batch.arm, 1.0 - batch.reward)


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (UniformPolicy, EpsilonGreedyPolicy, LinUCBPolicy, LinearTSPolicy, BernoulliTSPolicy)
}


def make_policy(name: str, dim: int, **params: Any) -> Policy:
    """A policy by registry name; unknown names and parameters are refused by name."""
    if name not in POLICIES:
        raise ValueError(f"name: expected one of {', '.join(POLICIES)}, got {name!r}")
    cls = POLICIES[name]
    allowed = {"n_classes", *cls._params}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: not a parameter of {name} (expected {', '.join(sorted(allowed))})")
    return cls(dim, **params)


def policy_from_state(state: dict[str, Any]) -> Policy:
    """Rebuild whichever policy a to_state() dict describes."""
    name = state.get("policy")
    if name not in POLICIES:
        raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {name!r}")
    return POLICIES[name].from_state(state)
