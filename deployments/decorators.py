"""Decorators: what each title on the page carries besides its id and score.

`ExplanationDecorator` says which sources proposed a title and why; `ArtworkDecorator` asks the
artwork stage for every title's artwork in one call (a contextual bandit chooses for the whole
page) and fills in each title's artwork and the propensity it was chosen with. HomepageConfig.
decorators names them; each adds one field of the response item, so the homepage JSON keeps its
shape whatever the policy. A decorator may return what the page's decision record should keep
(the artwork decision, for the reward join).
"""

from __future__ import annotations

from collections.abc import Sequence

from deployments.artwork import ArtworkStage, PageArtwork
from deployments.contracts import HomepageContext, Row


class ExplanationDecorator:
    name = field = "explanation"

    def __call__(self, ctx: HomepageContext, rows: Sequence[Row], items: Sequence[list[dict]]) -> None:
        for row, out_items in zip(rows, items):
            for item, out in zip(row.items, out_items):
                out["explanation"] = {"sources": list(item.sources), "reasons": list(item.reasons)}


class ArtworkDecorator:
    """One artwork per title, chosen for the whole page; a title without artwork gets none
    (propensity 1). Returns the decision, which the page's decision record keeps."""

    name = field = "artwork"

    def __init__(self, stage: ArtworkStage):
        self.stage = stage

    def __call__(self, ctx: HomepageContext, rows: Sequence[Row], items: Sequence[list[dict]]) -> PageArtwork:
        decision = self.stage.choose(ctx, [item.title_id for row in rows for item in row.items])
        for row, out_items in zip(rows, items):
            for item, out in zip(row.items, out_items):
                arm, propensity = decision.choices[item.title_id]
                out["artwork"] = {"artwork_id": arm, "propensity": round(propensity, 6)}
        return decision
