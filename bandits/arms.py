"""The catalog as the artwork bandit sees it: per title its artwork (the arms), each arm's theme
(its class) and the title's genre row. One definition for serving (deployments/artwork.py) and
the nearline learner, which rebuilds from a decision record the context row of the arm shown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bandits.context import N_GENRES, page_features
from marquee.schema import ARTWORK_THEMES
from producers.world.vocabulary import GENRES


@dataclass(frozen=True)
class ArmTable:
    """row_of: title_id -> row; arm_ids: per row the title's artwork ids in catalog order;
    arm_themes: (titles, max_arms) theme index, -1 where a title has fewer arms; genres:
    (titles, N_GENRES) 0/1 over the world's genre vocabulary (a dataset's other genres add
    nothing). An artwork of unknown theme counts as class 0."""

    row_of: dict[int, int]
    arm_ids: list[tuple[str, ...]]
    arm_themes: np.ndarray
    genres: np.ndarray

    @classmethod
    def build(cls, artwork: Mapping[int, Sequence[str]], artwork_theme: Mapping[str, str],
              title_genres: Mapping[int, Sequence[str]]) -> "ArmTable":
        genre_index = {g: i for i, g in enumerate(GENRES)}
        theme_index = {t: i for i, t in enumerate(ARTWORK_THEMES)}
        with_art = [t for t in sorted(artwork) if artwork[t]]
        width = max((len(artwork[t]) for t in with_art), default=1)
        themes = np.full((len(with_art), width), -1, np.int64)
        genres = np.zeros((len(with_art), N_GENRES))
        for row, title in enumerate(with_art):
            for k, art in enumerate(artwork[title]):
                themes[row, k] = theme_index.get(artwork_theme.get(art, ""), 0)
            for g in title_genres.get(title, ()):
                if g in genre_index:
                    genres[row, genre_index[g]] = 1.0
        return cls({t: r for r, t in enumerate(with_art)}, [tuple(artwork[t]) for t in with_art], themes, genres)

    @classmethod
    def of_dataset(cls, dataset_dir: str | Path) -> "ArmTable":
        """From a Marquee dataset's artwork and title tables."""
        from marquee.dataset import load_dataset

        dataset = load_dataset(dataset_dir)
        art = dataset.artwork
        artwork: dict[int, list[str]] = {}
        for a, t in zip(art.column("artwork_id").to_pylist(), art.column("title_id").to_pylist()):
            artwork.setdefault(int(t), []).append(a)
        theme = dict(zip(art.column("artwork_id").to_pylist(), art.column("theme").to_pylist()))
        titles = dataset.titles
        genres = dict(zip(titles.column("title_id").to_pylist(), titles.column("genres").to_pylist()))
        return cls.build(artwork, theme, {int(t): g or () for t, g in genres.items()})

    def arm_index(self, title_id: int, artwork_id: str) -> int | None:
        """Which arm of the title an artwork id is (None: not one of its arms)."""
        row = self.row_of.get(title_id)
        if row is None or artwork_id not in self.arm_ids[row]:
            return None
        return self.arm_ids[row].index(artwork_id)

    def shown_rows(self, member: np.ndarray, title_ids: Sequence[int], artwork_ids: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The context rows x (n, FEATURE_DIM) and classes (n,) of the arms that were shown,
        from the member vector of each (n, MEMBER_DIM) as the decision record kept it; and a
        mask of the (title, artwork) pairs this table knows (unknown ones get zero rows)."""
        n = len(title_ids)
        themes = np.full((n, 1), -1, np.int64)
        genres = np.zeros((n, N_GENRES))
        known = np.zeros(n, bool)
        for i, (t, a) in enumerate(zip(title_ids, artwork_ids)):
            arm = self.arm_index(int(t), a)
            if arm is not None:
                row = self.row_of[int(t)]
                themes[i, 0], genres[i], known[i] = self.arm_themes[row, arm], self.genres[row], True
        features, _ = page_features(np.asarray(member, np.float64), themes, genres)
        return features[:, 0, :], np.maximum(themes[:, 0], 0), known
