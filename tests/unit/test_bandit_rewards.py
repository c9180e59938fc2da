"""The reward join: trials are exposed (decision, title) pairs, rewards are plays in the window,
arms and propensities come from the decision only, and the odd cases (late, duplicate, missing,
unmatched, early, foreign) are each counted once and change no reward they should not."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from bandits.rewards import DEFAULT_LATENESS_MS, DEFAULT_WINDOW_MS, RewardJoin, Trial
from marquee.schema import Event, decision_event, events_to_table

T0 = 1_700_000_000_000
MIN = 60_000
WINDOW, LATE = DEFAULT_WINDOW_MS, DEFAULT_LATENESS_MS
CONTEXT = {"hour": 20, "device": "tv", "member": [0.25, 0.5]}


class Log:
    """Builds STORED_EVENT_SCHEMA rows in seq order."""

    def __init__(self):
        self.events: list[Event] = []

    def decision(self, rid: str, member: int, at: int, items: list[tuple[int, str, float]], version: int = 1):
        rows = [(t, art, p, "row-a", k) for k, (t, art, p) in enumerate(items)]
        self.events.append(Event.parse(decision_event(rid, member, at, "tv", "US", "linucb", version, rows, {}, CONTEXT)))
        return self

    def _event(self, kind: str, member: int, title: int, at: int, rid: str | None, **extra):
        n = len(self.events)
        self.events.append(Event.parse({"event_id": f"{kind}-{n}", "member_id": member, "title_id": title,
                                        "type": kind, "timestamp": at, "request_id": rid, **extra}))
        return self

    def impression(self, member, title, at, rid, **extra):
        return self._event("impression", member, title, at, rid, **extra)

    def play(self, member, title, at, rid=None):
        return self._event("play", member, title, at, rid)

    def other(self, member, title, at, rid=None):
        return self._event("progress", member, title, at, rid, value=0.5)

    def tick(self, at: int, member: int = 999):
        """A decision of another member with no items: only moves the watermark to `at` - lateness."""
        return self.decision(f"tick-{len(self.events)}", member, at, [])

    def table(self) -> pa.Table:
        return events_to_table(self.events, list(range(1, len(self.events) + 1)))


def closing_tick(log: Log, decision_ms: int) -> Log:
    """A tick that closes a decision made at `decision_ms` (the watermark passes its window)."""
    return log.tick(decision_ms + WINDOW + LATE + 1)


def run(log: Log, join: RewardJoin | None = None) -> tuple[RewardJoin, list[Trial]]:
    join = join or RewardJoin()
    return join, join.consume(log.table())


def by_title(trials: list[Trial]) -> dict[int, Trial]:
    return {t.title_id: t for t in trials}


def base_page(log: Log, rid: str = "r1", member: int = 7, at: int = T0) -> Log:
    return log.decision(rid, member, at, [(1, "1-0", 0.5), (2, "2-1", 0.25), (3, "3-2", 0.125)])


def test_a_trial_is_an_impressed_decided_title_with_the_decisions_arm_and_propensity():
    log = base_page(Log())
    log.impression(7, 1, T0 + 1000, "r1").impression(7, 2, T0 + 1000, "r1")  # title 3 never shown
    log.play(7, 1, T0 + 5 * MIN, "r1")
    closing_tick(log, T0)
    join, trials = run(log)
    got = by_title(trials)
    assert sorted(got) == [1, 2]
    assert (got[1].artwork_id, got[1].propensity, got[1].reward) == ("1-0", 0.5, 1.0)
    assert (got[2].artwork_id, got[2].propensity, got[2].reward) == ("2-1", 0.25, 0.0)
    assert got[1].policy == "linucb" and got[1].policy_version == 1 and got[1].context == CONTEXT
    assert (got[1].request_id, got[1].member_id, got[1].decision_ms) == ("r1", 7, T0)
    s = join.stats
    assert (s.decisions, s.trials, s.rewards, s.unexposed) == (2, 2, 1, 1)


def test_a_forged_artwork_and_propensity_in_an_impression_change_nothing():
    honest, forged = base_page(Log()), base_page(Log())
    honest.impression(7, 1, T0 + 1000, "r1")
    forged.impression(7, 1, T0 + 1000, "r1", artwork="1-9", propensity=0.001)
    for log in (honest, forged):
        log.play(7, 1, T0 + MIN, "r1")
        closing_tick(log, T0)
    _, a = run(honest)
    _, b = run(forged)
    assert a == b and len(a) == 1
    assert (a[0].artwork_id, a[0].propensity) == ("1-0", 0.5)


def test_a_play_after_the_window_is_late_and_the_reward_is_zero():
    log = base_page(Log()).impression(7, 1, T0, "r1")
    log.play(7, 1, T0 + WINDOW + 1, "r1")  # one ms too late, though read while the decision is open
    log.play(7, 1, T0 + WINDOW + 1)  # the same, untagged: no open window holds it
    closing_tick(log, T0)
    join, trials = run(log)
    assert [t.reward for t in trials] == [0.0] and join.stats.late == 1


def test_a_play_at_the_end_of_the_window_counts():
    log = base_page(Log()).impression(7, 1, T0, "r1").play(7, 1, T0 + WINDOW, "r1")
    _, trials = run(closing_tick(log, T0))
    assert [t.reward for t in trials] == [1.0]


def test_events_read_after_their_decision_closed_are_late_not_unmatched():
    log = base_page(Log()).impression(7, 1, T0, "r1")
    closing_tick(log, T0)
    log.play(7, 1, T0 + MIN, "r1").impression(7, 2, T0 + MIN, "r1")  # in the window, read too late
    join, trials = run(log)
    assert [t.reward for t in trials] == [0.0]
    assert (join.stats.late, join.stats.unmatched) == (2, 0)


def test_duplicate_impressions_and_plays_count_once():
    log = base_page(Log())
    for _ in range(3):
        log.impression(7, 1, T0 + 1000, "r1")
    log.play(7, 1, T0 + MIN, "r1").play(7, 1, T0 + 2 * MIN, "r1").play(7, 1, T0 + 3 * MIN)
    join, trials = run(closing_tick(log, T0))
    assert len(trials) == 1 and trials[0].reward == 1.0
    assert join.stats.duplicates == 4 and join.stats.rewards == 1


def test_a_missing_play_gives_reward_zero_only_once_the_watermark_passes_the_window():
    log = base_page(Log()).impression(7, 1, T0, "r1")
    log.tick(T0 + WINDOW + LATE)  # watermark = T0 + WINDOW: the window's last instant, still open
    join, trials = run(log)
    assert trials == [] and join.open_decisions == 2  # the page and the tick
    trials = join.consume(Log().tick(T0 + WINDOW + LATE + 1).table())
    assert [(t.title_id, t.reward) for t in trials] == [(1, 0.0)]
    assert join.open_decisions == 2  # both ticks


def test_client_timestamps_do_not_move_the_watermark():
    log = base_page(Log()).impression(7, 1, T0, "r1")
    log.other(7, 1, T0 + 365 * 24 * 60 * MIN).play(8, 4, T0 + 365 * 24 * 60 * MIN)  # a forged far future
    log.play(7, 1, T0 + MIN, "r1")  # still counts: the window is open
    join, trials = run(log)
    assert trials == [] and join.watermark_ms == T0 - LATE
    _, trials = run(closing_tick(Log(), T0), join)
    assert [t.reward for t in trials] == [1.0]


def test_an_event_whose_request_id_has_no_decision_is_held_then_dropped_as_unmatched():
    log = Log().tick(T0)
    log.impression(7, 1, T0 + 1000, "nobody").play(7, 1, T0 + 2000, "nobody")
    log.tick(T0 + LATE + 2000)  # watermark = T0 + 2000: the play's time is not yet passed
    join, _ = run(log)
    assert (join.orphans, join.stats.unmatched) == (1, 1)
    run(Log().tick(T0 + LATE + 2001), join)
    assert (join.orphans, join.stats.unmatched, join.stats.trials) == (0, 2, 0)


def test_an_impression_logged_before_its_decision_is_joined():
    log = Log().tick(T0)
    log.impression(7, 1, T0 + 10, "r1").play(7, 1, T0 + 20, "r1")  # the client was faster than the recorder
    base_page(log, at=T0 + 5)
    join, trials = run(closing_tick(log, T0 + 5))
    assert [(t.title_id, t.reward) for t in trials] == [(1, 1.0)]
    assert join.stats.unmatched == 0 and join.orphans == 0


def test_orphans_are_bounded():
    log = Log().tick(T0)
    for i in range(10):
        log.impression(7, 1, T0 + i, f"made-up-{i}")
    join, _ = run(log, RewardJoin(max_orphans=4))
    assert (join.orphans, join.stats.unmatched) == (4, 6)


def test_a_play_before_the_decision_is_ignored():
    log = base_page(Log()).impression(7, 1, T0, "r1").play(7, 1, T0 - 1, "r1")
    join, trials = run(closing_tick(log, T0))
    assert [t.reward for t in trials] == [0.0] and join.stats.early == 1


def test_another_member_using_a_request_id_is_ignored_and_counted():
    log = base_page(Log())
    log.impression(8, 1, T0, "r1").play(8, 1, T0 + MIN, "r1")  # member 8 replays member 7's page id
    log.impression(7, 2, T0, "r1").play(8, 2, T0 + MIN, "r1")
    join, trials = run(closing_tick(log, T0))
    assert [(t.title_id, t.member_id, t.reward) for t in trials] == [(2, 7, 0.0)]
    assert join.stats.foreign == 3


def test_a_title_not_on_the_page_is_off_page():
    log = base_page(Log()).impression(7, 42, T0, "r1").play(7, 42, T0 + 1, "r1")
    join, trials = run(closing_tick(log, T0))
    assert trials == [] and join.stats.off_page == 2


def test_an_untagged_play_goes_to_the_most_recent_exposure_before_it():
    log = base_page(Log(), "r1", at=T0).impression(7, 1, T0, "r1")
    base_page(log, "r2", at=T0 + 10 * MIN).impression(7, 1, T0 + 10 * MIN, "r2")
    log.play(7, 1, T0 + 12 * MIN)  # no request id: last touch is r2
    join, trials = run(closing_tick(log, T0 + 10 * MIN))
    assert {t.request_id: t.reward for t in trials} == {"r1": 0.0, "r2": 1.0}
    assert join.stats.untagged_plays_credited == 1


def test_an_untagged_play_before_any_impression_is_held_for_the_first_one():
    log = base_page(Log()).play(7, 1, T0 + MIN).impression(7, 1, T0 + 30_000, "r1")
    _, trials = run(closing_tick(log, T0))
    assert [t.reward for t in trials] == [1.0]


def test_an_untagged_play_before_the_exposure_is_not_credited():
    log = base_page(Log()).impression(7, 1, T0 + 2 * MIN, "r1").play(7, 1, T0 + MIN)
    join, trials = run(closing_tick(log, T0))
    assert [t.reward for t in trials] == [0.0] and join.stats.untagged_plays_credited == 0


def test_an_impression_after_the_window_makes_no_trial():
    log = base_page(Log()).impression(7, 1, T0 + WINDOW + 1, "r1")
    join, trials = run(closing_tick(log, T0))
    assert trials == [] and join.stats.late == 1 and join.stats.unexposed == 3


def test_untagged_impressions_and_other_types_are_skipped():
    log = base_page(Log()).impression(7, 1, T0, None).other(7, 1, T0, "r1")
    join, trials = run(closing_tick(log, T0))
    assert trials == [] and join.stats.untagged_impressions == 1 and join.stats.unexposed == 3


def busy_log(pages: int = 40) -> Log:
    """Pages every 2 minutes for 3 members, with every odd case mixed in."""
    log = Log()
    for p in range(pages):
        at, member, rid = T0 + p * 2 * MIN, p % 3, f"p{p}"
        if p % 7 == 3:
            log.impression(member, 10 + p % 5, at + 3, rid)  # before its decision
        log.decision(rid, member, at, [(10 + k, f"{10 + k}-{p % 2}", 0.5) for k in range(5)])
        log.impression(member, 10 + p % 5, at + 1000, rid).impression(member, 11, at + 1000, rid)
        if p % 2 == 0:
            log.play(member, 10 + p % 5, at + (p % 4) * 10 * MIN, rid)  # some late
        if p % 5 == 0:
            log.play(member, 11, at + MIN)  # untagged
        if p % 6 == 0:
            log.play((member + 1) % 3, 11, at + MIN, rid)  # foreign
        log.impression(member, 11, at + 2000, f"ghost{p}")
    return closing_tick(log, T0 + pages * 2 * MIN)


def test_trials_do_not_depend_on_how_the_log_is_read_in_batches():
    table = busy_log().table()
    whole = RewardJoin()
    expected = whole.consume(table)
    assert len(expected) > 40 and 0 < sum(t.reward for t in expected) < len(expected)
    stepped = RewardJoin()
    got = [t for start in range(0, table.num_rows, 7) for t in stepped.consume(table.slice(start, 7))]
    assert got == expected and stepped.stats == whole.stats


def test_a_join_restored_from_its_json_state_finishes_exactly_the_same_trials():
    table = busy_log().table()
    expected = RewardJoin().consume(table)
    for cut in (5, 61, 130):
        first = RewardJoin()
        before = first.consume(table.slice(0, cut))
        state = json.loads(json.dumps(first.to_state()))
        resumed = RewardJoin.from_state(state, table.slice(0, cut))
        assert resumed.to_state() == state
        assert before + resumed.consume(table.slice(cut)) == expected


def test_the_state_refers_to_open_decisions_by_seq_and_keeps_only_what_happened_to_them():
    """The log holds the records: the state carries their seqs and the exposed / rewarded titles
    (the checkpoint stays small however many titles a page has), and restoring needs the records."""
    log = base_page(Log())
    log.decision("r2", 8, T0 + 10, [(11, "11-0", 0.5), (12, "12-1", 0.25)])
    log.impression(7, 1, T0 + 100, "r1").play(7, 1, T0 + 200, "r1")
    table = log.table()
    join = RewardJoin()
    join.consume(table)
    state = json.loads(json.dumps(join.to_state()))
    assert state["open"] == [[1, [[1, T0 + 100, True]]], [2, []]]
    assert RewardJoin.decision_seqs(state) == [1, 2]
    with pytest.raises(ValueError, match="2 decision record"):
        RewardJoin.from_state(state)
    with pytest.raises(ValueError, match="seq 2"):
        RewardJoin.from_state(state, table.slice(0, 1))
    with pytest.raises(ValueError, match="seq 3 is a 'impression'"):
        RewardJoin.from_state({**state, "open": [[3, []]]}, table)
    resumed = RewardJoin.from_state(state, [table.slice(0, 1), table.slice(1)])  # batches, extra rows ignored
    assert resumed.to_state() == state
    tick = closing_tick(Log(), T0 + 10).table()
    assert resumed.consume(tick) == join.consume(tick) and resumed.stats == join.stats


def test_a_format_1_state_with_its_decisions_copied_in_is_still_restored():
    table = busy_log().table()
    expected = RewardJoin().consume(table)
    first = RewardJoin()
    before = first.consume(table.slice(0, 61))
    state = first.to_state()
    def item_state(e, t):  # format 1: [title, artwork_id, propensity, row_id, position, exposed_ms, rewarded]
        i = e.touched.get(t)
        return [None, False] if i is None else [i.exposed_ms, i.rewarded]

    old = {**state, "format": 1, "open": [
        {"request_id": e.request_id, "member_id": e.member_id, "decision_ms": e.decision_ms,
         "deadline_ms": e.deadline_ms, "policy": e.policy, "policy_version": e.policy_version,
         "context": e.context, "items": [[t, *arm, *item_state(e, t)] for t, arm in e.arms.items()]}
        for e in first._open.values()]}
    assert any(i[5] is not None for e in old["open"] for i in e["items"]), "some title must be exposed"
    assert old["open"], "the cut must leave decisions open"
    resumed = RewardJoin.from_state(json.loads(json.dumps(old)))
    assert resumed.to_state()["open"] == old["open"]  # no record to refer to: kept whole until closed
    assert before + resumed.consume(table.slice(61)) == expected


def test_memory_is_bounded_by_the_window():
    join = RewardJoin()
    for p in range(200):
        at = T0 + p * MIN
        log = base_page(Log(), f"r{p}", at=at).impression(7, 1, at, f"r{p}")
        join.consume(log.table())
    horizon = (WINDOW + LATE) // MIN  # decisions still open: the last window + lateness
    assert join.open_decisions <= horizon + 1
    assert len(join.to_state()["closed"]) <= horizon + 1 + (WINDOW + LATE) // MIN + 1
    assert join.stats.trials == 200 - join.open_decisions


def test_advance_closes_windows_of_an_idle_log():
    join, trials = run(base_page(Log()).impression(7, 1, T0, "r1"))
    assert trials == [] and join.advance(T0 + WINDOW) == []
    assert [t.reward for t in join.advance(T0 + WINDOW + 1)] == [0.0]


@pytest.mark.parametrize("kwargs, field", [({"window_ms": 0}, "window_ms"), ({"allowed_lateness_ms": -1},
                                           "allowed_lateness_ms"), ({"max_orphans": 1.5}, "max_orphans")])
def test_bad_settings_are_refused_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RewardJoin(**kwargs)


def test_a_state_of_another_format_is_refused():
    with pytest.raises(ValueError, match="format"):
        RewardJoin.from_state({"format": 99})


def test_open_decisions_are_bounded_the_soonest_due_closes_early_and_is_counted():
    """Memory and the checkpoint grow with open decisions: past max_open the soonest due closes
    with what has arrived (an exposed title becomes a trial), counted as evicted."""
    log = Log()
    for i in range(3):
        log.decision(f"r{i}", 7, T0 + i, [(11, "11-0", 0.5)]).impression(7, 11, T0 + 100 + i, f"r{i}")
    join, finished = run(log, RewardJoin(max_open=2))
    assert join.open_decisions == 2 and join.stats.evicted == 1
    assert [t.request_id for t in finished] == ["r0"] and finished[0].reward == 0.0
    assert RewardJoin.from_state(join.to_state(), log.table()).max_open == 2
    with pytest.raises(ValueError, match="max_open"):
        RewardJoin(max_open=0)
