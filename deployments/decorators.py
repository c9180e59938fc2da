"""Decorators: what each title on the page carries besides its id and score.

`ExplanationDecorator` says which sources proposed a title and why; `ArtworkDecorator` asks the
artwork policy for one artwork per title and records the propensity it was chosen with (logged
with the impression, for off-policy evaluation). HomepageConfig.decorators names them; each adds
one field of the response item, so the homepage JSON keeps its shape whatever the policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from deployments.artwork import ArtworkPolicy
from deployments.contracts import HomepageContext, Row


class ExplanationDecorator:
    name = field = "explanation"

    def __call__(self, ctx: HomepageContext, row: Row, items: list[dict]) -> None:
        for item, out in zip(row.items, items):
            out["explanation"] = {"sources": list(item.sources), "reasons": list(item.reasons)}


class ArtworkDecorator:
    """One artwork per title, chosen by the policy; a title without artwork gets none (propensity 1)."""

    name = field = "artwork"

    def __init__(self, policy: ArtworkPolicy, artwork: Mapping[int, Sequence[str]]):
        self.policy, self.artwork = policy, artwork

    def __call__(self, ctx: HomepageContext, row: Row, items: list[dict]) -> None:
        select = self.policy.select
        for item, out in zip(row.items, items):
            arms = self.artwork.get(item.title_id, ())
            arm, propensity = (None, 1.0)
            if arms:
                arm, propensity = select({"request_id": ctx.request_id, "member_id": ctx.member_id,
                                          "title_id": item.title_id, "device": ctx.device, "row": row.row_id}, arms)
            out["artwork"] = {"artwork_id": arm, "propensity": round(float(propensity), 6)}
