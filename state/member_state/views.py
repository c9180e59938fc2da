"""What callers of member state see: one member's state, ready for the homepage, ordered most
recent first (plain frozen dataclasses, picklable and JSON-ready, so they cross Ray as they are)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ContinueWatching:
    """One row of the continue-watching list: a movie, or a series at the episode to resume."""

    title_id: int
    progress: float
    updated_ms: int
    series_id: int | None
    episode: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemberSnapshot:
    """Everything the homepage needs about one member, already ordered most recent first.

    `titles_played` (distinct titles ever played) is exact until the member has played more than
    2 x recent_limit titles; after that a title played again after being trimmed out of the
    recent window counts again, so it is an upper bound (good enough to tell cold from warm)."""

    member_id: int
    continue_watching: list[ContinueWatching]
    my_list: list[int]
    thumbs: dict[int, int]
    recently_watched: list[int]
    known: bool  # False: no event for this member has been applied yet
    recent_ms: list[int] = field(default_factory=list)  # when each recently_watched title was last played
    first_event_ms: int | None = None  # earliest event of any type (None: unknown member)
    titles_played: int = 0
    preferred_genres: list[str] = field(default_factory=list)  # newest preference event wins

    @classmethod
    def empty(cls, member_id: int) -> "MemberSnapshot":
        return cls(member_id, [], [], {}, [], known=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
