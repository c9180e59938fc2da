"""A promoted model version, loaded for serving: live histories in, candidates and scores out.

The registry holds the model as an explicit bundle (models/bundle.py: XGBoost's own format and
.npy arrays, each checked against its sha256; never a pickle). Serving uses its fitted sources and
boosters through the same feature code as training (FeatureBuilder.build_batch), but the member
side comes from live member state: what they watched a second ago counts, and a member who joined
after the fit still gets a ranked page. A bundle trained on another catalog than the replica
serves is refused (ModelLoadError), so the old version keeps serving and /healthz says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marquee.names import MS
from models.bundle import BUNDLE_DIR, LEGACY_PICKLE, DatasetIdentity, ModelBundle, load_bundle
from models.histories import Histories
from models.ranker_features import Candidates, MemberBatch
from state.registry import Registry


class ModelLoadError(RuntimeError):
    """A registered version could not be made ready to serve (the old one keeps serving)."""


@dataclass(frozen=True)
class LiveMember:
    """What the model needs about one member, from live member state."""

    member_id: int
    recent: tuple[int, ...]  # title ids, most recent first
    titles_played: int = 0
    first_event_ms: int | None = None


class ServingModel:
    """One registered version: sources, feature builder and the two boosters."""

    def __init__(self, bundle: ModelBundle, version: str):
        builder = bundle.builder
        self.bundle, self.version, self.builder = bundle, version, builder
        self.dataset: DatasetIdentity = bundle.dataset
        self.title_ids = bundle.title_ids  # title index -> title_id
        self.index_of = {int(t): i for i, t in enumerate(self.title_ids)}
        self.as_of_s = bundle.as_of_s
        self.source_names = tuple(builder.sources)
        self.feature_names = tuple(bundle.feature_names)
        self._boosters = bundle.boosters
        for booster in self._boosters.values():
            booster.set_param({"nthread": 1})  # a replica owns a fraction of a CPU: no thread pool
        self._weights = (bundle.config.play_weight, bundle.config.completion_weight)
        self._similar = builder.sources.get("recency_ease")
        self._similar_cache: dict[tuple[int, int], list[tuple[int, float]]] = {}  # the model never changes

    @classmethod
    def load(cls, registry_root: str | Path, version: str, *,
             catalog: DatasetIdentity | None = None) -> "ServingModel":
        """Verify the version's files, check it was trained on `catalog` (the catalog this
        replica serves; None: unchecked, e.g. a ranker that only scores features made by a
        checked stage), then build it from its bundle; any failure is a ModelLoadError."""
        try:
            registry = Registry(registry_root, read_only=True)
            files = registry.get(version).files
            if not any(name.startswith(f"{BUNDLE_DIR}/") for name in files):
                if LEGACY_PICKLE in files:
                    raise ModelLoadError(
                        f"{version} was written in the previous format ({LEGACY_PICKLE}), which serving "
                        "no longer loads (a pickle can run code when loaded): retrain to register a "
                        "bundle (`marquee retrain`)")
                raise ModelLoadError(f"{version} holds no model bundle ({BUNDLE_DIR}/); it has {', '.join(files)}")
            registry.verify(version)
            bundle = load_bundle(Path(registry.get(version).path) / BUNDLE_DIR, expect=catalog,
                                 subject=version, server="this replica")
            model = cls(bundle, version)
            model.warm_up()
        except ModelLoadError:
            raise
        except Exception as exc:  # a corrupt or incompatible artifact must never replace a good one
            raise ModelLoadError(f"{version}: {type(exc).__name__}: {exc}") from exc
        return model

    def warm_up(self) -> None:
        """Score one empty history end to end, so a version that cannot serve fails here."""
        batch = self.batch([LiveMember(0, ()), LiveMember(0, tuple(int(t) for t in self.title_ids[:3]))])
        candidates = self.candidates(batch, self.score_sources(batch.histories))
        if candidates.names != list(self.feature_names):
            raise ModelLoadError(f"{self.version}: features {candidates.names[:3]}... do not match the "
                                 f"boosters' {list(self.feature_names)[:3]}...")
        self.rank(candidates.features)

    # -- member side -----------------------------------------------------------------------------

    def batch(self, members: Sequence[LiveMember]) -> MemberBatch:
        """Histories of known titles (unknown ones have no index), at the model's point in time."""
        now = self.as_of_s
        lists, firsts, played = [], [], []
        for m in members:
            lists.append([self.index_of[t] for t in m.recent if t in self.index_of])
            first = now if m.first_event_ms is None else min(m.first_event_ms // MS, now)
            firsts.append(first)
            played.append(max(m.titles_played, len(lists[-1])))
        histories = Histories.from_lists(lists, [now] * len(members), len(self.title_ids))
        ids = np.array([m.member_id for m in members], dtype=np.int64)
        return MemberBatch(histories, np.arange(len(members)), ids, np.array(played, dtype=np.int64),
                           np.array(firsts, dtype=np.int64))

    def score_sources(self, histories: Histories) -> dict[str, np.ndarray]:
        return self.builder.source_scores(histories)

    def score_source(self, name: str, histories: Histories) -> np.ndarray:
        return self.builder.sources[name].score_histories(histories)

    def candidates(self, batch: MemberBatch, scores: dict[str, np.ndarray | None],
                   include: np.ndarray | None = None) -> Candidates:
        return self.builder.build_batch(batch, scores, include)

    def include_mask(self, n_rows: int, title_ids_per_row: Sequence[Sequence[int]]) -> np.ndarray:
        mask = np.zeros((n_rows, len(self.title_ids)), dtype=bool)
        for row, titles in enumerate(title_ids_per_row):
            index = [self.index_of[t] for t in titles if t in self.index_of]
            mask[row, index] = True
        return mask

    # -- ranking -----------------------------------------------------------------------------------

    def rank(self, features: np.ndarray) -> np.ndarray:
        """Blended likelihood of play and of completion for each row of `features`."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(f"{self.version}: expected features of shape (n, {len(self.feature_names)}), "
                             f"got {features.shape}")
        if len(features) == 0:
            return np.zeros(0)
        play_w, completion_w = self._weights  # inplace_predict: no DMatrix per request
        return (play_w * self._boosters["play"].inplace_predict(features)
                + completion_w * self._boosters["completion"].inplace_predict(features))

    def similar(self, title_id: int, k: int) -> list[tuple[int, float]]:
        """Titles most like `title_id` by the item-item model ("because you watched")."""
        cached = self._similar_cache.get((title_id, k))
        if cached is None:
            cached = self._similar_cache[(title_id, k)] = self._top_similar(title_id, k)
        return list(cached)

    def _top_similar(self, title_id: int, k: int) -> list[tuple[int, float]]:
        if self._similar is None or title_id not in self.index_of:
            return []
        scores = np.asarray(self._similar.similar(self.index_of[title_id]), dtype=np.float64).copy()
        scores[self.index_of[title_id]] = -np.inf
        k = min(k, len(scores) - 1)
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.title_ids[i]), float(scores[i])) for i in top if scores[i] > 0]
