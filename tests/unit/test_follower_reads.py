"""Followers of the event log read only what they need (EventLog.read's types and columns), and
end up where a full read takes them: member state without the server's decision records, the
bandit learner's join with only decisions, impressions and plays."""

from __future__ import annotations

import pyarrow as pa

from bandits.rewards import JOINED_TYPES, RewardJoin
from marquee.schema import CLIENT_EVENT_TYPES, decision_event
from state.eventlog import EventLog
from state.member_state import MemberState
from state.member_state.decode import REQUIRED_COLUMNS

T0 = 1_700_000_000_000


def _traffic() -> list[dict]:
    events = []
    for page in range(40):
        member, at = 1 + page % 5, T0 + page * 60_000
        request = f"req-{page}"
        events.append(decision_event(request, member, at, "tv", "US", "linucb", 1,
                                     [(10 + page % 7, f"art-{page % 7}-0", 0.5, "top", 0)], {}, {"hour": 20}))
        events.append({"event_id": f"imp-{page}", "member_id": member, "title_id": 10 + page % 7, "type": "impression",
                       "timestamp": at + 1_000, "request_id": request})
        if page % 3 == 0:
            events.append({"event_id": f"play-{page}", "member_id": member, "title_id": 10 + page % 7,
                           "type": "play", "timestamp": at + 5_000, "request_id": request})
        if page % 4 == 0:
            events.append({"event_id": f"list-{page}", "member_id": member, "title_id": 20 + page % 3,
                           "type": "my_list_add", "timestamp": at + 9_000})
    return events


def _follow(read, apply, applied_seq, limit: int = 7) -> int:
    """Read in small batches until caught up, as a follower's loop does."""
    while True:
        rows = read(applied_seq(), limit)
        if rows.num_rows == 0:
            return applied_seq()
        apply(rows)


def test_member_state_without_decision_records_is_the_state_of_a_full_read(tmp_path):
    with EventLog(tmp_path / "log") as log:
        result = log.append(_traffic())
        assert not result.rejected
        full, filtered = MemberState(), MemberState()
        _follow(log.read, full.apply, lambda: full.applied_seq)
        seen = []
        _follow(lambda since, limit: seen.append(t := log.read(since, limit, types=list(CLIENT_EVENT_TYPES),
                                                              columns=list(REQUIRED_COLUMNS))) or t,
                filtered.apply, lambda: filtered.applied_seq)
        assert filtered.applied_seq == full.applied_seq == log.last_seq
        assert filtered.to_table().equals(full.to_table())
        shipped = pa.concat_tables(seen)
        # no decision record left the log, except as the last row of a read (so the seq moves on)
        assert shipped.filter(pa.compute.equal(shipped.column("type"), "decision")).num_rows <= len(seen)
        assert set(shipped.column_names) == set(REQUIRED_COLUMNS)


def test_the_reward_join_on_its_own_types_finishes_the_same_trials(tmp_path):
    with EventLog(tmp_path / "log") as log:
        log.append(_traffic())
        everything = log.read(-1, 10_000)
        own = log.read(-1, 10_000, types=list(JOINED_TYPES))
    assert own.num_rows < everything.num_rows
    a, b = RewardJoin(), RewardJoin()
    trials_a = a.consume(everything) + a.advance(T0 + 10**9)
    trials_b = b.consume(own) + b.advance(T0 + 10**9)
    assert trials_a == trials_b and len(trials_a) == 40
    assert sum(t.reward for t in trials_a) == 14
