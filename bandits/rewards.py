"""The reward join: the server's decision records, the impressions and the plays of the event log,
joined incrementally into finished bandit trials (context, arm, reward, propensity).

What a trial is. A trial is one (decision, title) the member was shown: the page's decision
record (marquee.schema.decision_event) plus an impression of that title carrying the page's
request_id, posted for the decision's member. A title that was decided but never impressed is no
trial: the member never saw its artwork, so the reward (no play) says nothing about the arm, and
counting it would credit the arm with a failure it had no chance to avoid (no exposure, no
counterfactual). Arm and propensity come from the decision record only; the artwork and
propensity fields of an impression are ignored, since a client could forge them (and a
propensity below the real one would inflate every off-policy estimate weighted by 1/p).

The rules, all in event time:

- A decision at time d opens a window [d, d + window_ms] (default 30 min).
- An impression of a decided title by the decision's member exposes it at max(its time, d) (a
  client's clock running behind the server's cannot move the exposure before the page existed).
  An impression after the window is `late` (the trial would be a certain 0); a second one of the
  same title is a `duplicate`.
- Reward 1 when a play of the title by the decision's member arrives within the window:
  * a play carrying the request_id counts when d <= its time <= d + window_ms (before d: `early`,
    ignored; after: `late`), whether its impression was logged before or after it;
  * a play without a request_id (search, a deep link) counts when the member was shown the title
    on an open page at or before the play and the play falls in that page's window. It is
    credited to one trial only: the exposure of that title to that member most recently before
    the play (last touch), among the impressions known when the play is read; a play read before
    any impression of the title is held and taken by the first impression that arrives for it
    within the window. A play matching no open page is ordinary behaviour and is not counted.
  * A second play for a trial already rewarded is a `duplicate` (the reward stays 1).
- An impression or play carrying a request_id of another member than the decision's is ignored
  and counted as `foreign`; one for a title that was not on the page as `off_page`.
- An impression or play whose request_id has no decision record is held briefly (the server
  writes decisions in batches, so a client's impression can reach the log first) and dropped as
  `unmatched` if none arrives by the time the watermark passes it.
- A decision closes when the watermark passes its window's end: each exposed title becomes a
  trial, reward 0 unless a play was credited. Its request id is remembered for one more
  window + lateness, so an event arriving after the close counts as `late` (not `unmatched`);
  after that it is forgotten. Memory is bounded by what an event-time window holds.

The watermark is the largest decision timestamp seen, minus `allowed_lateness_ms`. Decision
timestamps are written by the server; a client's event may carry any time up to 2100, and one
forged far-future play would otherwise close every open window at once and zero their rewards.
With the watermark a function of the log's contents and order alone, and closing checked after
every row, the trials a log yields do not depend on how it is read in batches: a learner
restarted from a checkpoint derives exactly the trials it would have.

The state (`to_state()`/`from_state()`, JSON values) refers to each open decision by the seq of its
record in the log, with only what happened to it since (its exposed and rewarded titles), and
`from_state` takes those records back from the log (`decision_seqs` says which). Why: the log
already holds every decision, and an open page's record is most of its bytes (~80 titles, each
with arm, propensity, row and position); copying 20,000 of them into every checkpoint made it
92 MB of JSON and ~6 CPU-s a minute, beside the homepages it competes with. An entry restored from
a checkpoint of format 1 (records copied in) stays copied in until it closes.

Pure Python, numpy and pyarrow; no Ray.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from marquee.schema import Decision, EventError, parse_decision
from marquee.settings import check_int

MINUTE_MS = 60_000
DEFAULT_WINDOW_MS = 30 * MINUTE_MS
DEFAULT_LATENESS_MS = 5 * MINUTE_MS
DEFAULT_MAX_ORPHANS = 100_000
# Open decisions kept at most: memory and the checkpoint grow with them (a page's record holds
# ~100 titles), and under load every page stays open for its whole window whether or not an
# impression ever comes. Past the bound the soonest-due decision closes early (its trials finish
# with what has arrived; counted as `evicted`): at 100 pages/s this shortens the window to ~3 min.
DEFAULT_MAX_OPEN = 20_000
MAX_HELD_PLAYS = 16  # untagged plays of one (member, title) awaiting an impression
STATE_FORMAT = 2  # 1: open decisions copied in whole (still read)
READ_FORMATS = (1, 2)
JOINED_TYPES = ("decision", "impression", "play")  # what the join reads of the log
_ROW_COLUMNS = ("type", "member_id", "title_id", "request_id")


@dataclass(frozen=True)
class Trial:
    """One finished trial: the arm (artwork) a decision showed for a title, the probability the
    policy had of showing it, and whether the member played the title within the window.
    `context` is the decision's context (what the policy saw: {"hour", "device", "member"})."""

    request_id: str
    member_id: int
    title_id: int
    artwork_id: str
    propensity: float
    reward: float  # 1.0 played within the window, else 0.0
    policy: str
    policy_version: int
    decision_ms: int
    row_id: str
    position: int
    context: dict

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Trial":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass
class JoinStats:
    """Counters of the join since it started (kept across checkpoints)."""

    decisions: int = 0  # decision records opened
    trials: int = 0  # finished trials (exposed titles of closed decisions)
    rewards: int = 0  # of which played within the window
    unexposed: int = 0  # decided titles never impressed (no trial)
    late: int = 0  # impressions/plays after their window, or after their decision closed
    early: int = 0  # plays carrying a request_id, timed before its decision
    unmatched: int = 0  # impressions/plays whose request_id has no decision record
    duplicates: int = 0  # second impressions/plays of a trial; repeated decision records
    foreign: int = 0  # impressions/plays with another member's request_id
    off_page: int = 0  # impressions/plays with a request_id whose page did not hold the title
    untagged_impressions: int = 0  # impressions without a request_id (no decision to join)
    untagged_plays_credited: int = 0  # rewards from plays without a request_id
    bad_decisions: int = 0  # decision rows parse_decision refused
    evicted: int = 0  # decisions closed before their window ended, to keep max_open

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class _Item:
    """What happened to one title of an open page (made on its first impression or play)."""

    exposed_ms: int | None = None
    rewarded: bool = False


@dataclass(slots=True)
class _Open:
    """An open decision. `arms` holds what the record decided per title, as tuples of plain
    values (artwork_id, propensity, row_id, position), and `touched` an _Item only for the titles
    an event named: most titles of a page see none, and 20,000 open pages of ~80 titles as
    objects were 1.6M objects for Python's collector to walk (0.8 s per full collection)."""

    request_id: str
    member_id: int
    decision_ms: int
    deadline_ms: int
    policy: str
    policy_version: int
    context: dict
    arms: dict[int, tuple[str, float, str, int]] = field(default_factory=dict)
    touched: dict[int, _Item] = field(default_factory=dict)
    seq: int | None = None  # of its record in the log (None: restored from a format-1 state)

    def item(self, title: int | None) -> _Item | None:
        """The title's _Item (made now if none yet); None if the page did not hold it."""
        item = self.touched.get(title)  # type: ignore[arg-type]
        if item is None and title in self.arms:
            item = self.touched[title] = _Item()  # type: ignore[index]
        return item

    def exposed_ms(self, title: int) -> int | None:
        item = self.touched.get(title)
        return None if item is None else item.exposed_ms


class RewardJoin:
    """Feed event batches (STORED_EVENT_SCHEMA rows in ascending seq) with `consume`; it returns
    the trials that finished. See the module docstring for the rules."""

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, allowed_lateness_ms: int = DEFAULT_LATENESS_MS,
                 max_orphans: int = DEFAULT_MAX_ORPHANS, max_open: int = DEFAULT_MAX_OPEN):
        self.window_ms = check_int("window_ms", window_ms, ge=1)
        self.max_open = check_int("max_open", max_open, ge=1)
        self.lateness_ms = check_int("allowed_lateness_ms", allowed_lateness_ms, ge=0)
        self.max_orphans = check_int("max_orphans", max_orphans, ge=0)
        self.stats = JoinStats()
        self.max_decision_ms: int | None = None
        self._open: dict[str, _Open] = {}
        self._closing: list[tuple[int, str]] = []  # heap of (deadline, request_id) of open decisions
        self._closed: dict[str, int] = {}  # request_id -> event time the watermark forgets it at
        self._forgetting: list[tuple[int, str]] = []  # heap of (forget_at, request_id)
        self._shown: dict[tuple[int, int], set[str]] = {}  # (member, title) -> open request ids deciding it
        self._held_plays: dict[tuple[int, int], list[int]] = {}  # untagged plays awaiting an impression
        # request_id -> {arrival number: (hold_until, type, member, title, ts)}, in arrival order
        self._orphans: dict[str, dict[int, tuple[int, str, int, int | None, int]]] = {}
        self._orphan_count = 0
        self._orphan_expiry: list[tuple[int, int, str]] = []  # heap of (hold_until, arrival, request_id)
        self._arrivals = 0
        self._finished: list[Trial] = []

    # -- public ----------------------------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        """Event time up to which every window is final (None before the first decision)."""
        return None if self.max_decision_ms is None else self.max_decision_ms - self.lateness_ms

    @property
    def open_decisions(self) -> int:
        return len(self._open)

    @property
    def orphans(self) -> int:
        return self._orphan_count

    def consume(self, table: pa.Table) -> list[Trial]:
        """Join a batch of log rows; returns the trials that finished (closed) during it."""
        for row in _joined_rows(table):
            self._apply(*row)
        finished, self._finished = self._finished, []
        return finished

    def advance(self, watermark_ms: int) -> list[Trial]:
        """Move the watermark to at least `watermark_ms` without a decision (for an idle log,
        with the server's clock) and return the trials that finished."""
        self._advance_to(watermark_ms + self.lateness_ms)
        finished, self._finished = self._finished, []
        return finished

    # -- one row ---------------------------------------------------------------------------------

    def _apply(self, kind: str, member: int, title: int | None, request_id: str | None, ts: int,
               row: dict | None) -> None:
        if kind == "decision":
            self._decision(row, ts)
        elif request_id is None:
            if kind == "impression":
                self.stats.untagged_impressions += 1
            elif title is not None:
                self._untagged_play(member, title, ts)
        else:
            self._tagged(kind, member, title, request_id, ts)

    def _decision(self, row: dict, ts: int) -> None:
        try:
            decision = parse_decision(row)
        except EventError:
            self.stats.bad_decisions += 1
            return
        rid = decision.request_id
        if rid in self._open or rid in self._closed:
            self.stats.duplicates += 1
        else:
            self._open_decision(_entry(decision, self.window_ms, row.get("seq")))
            for _, kind, member, title, at in self._orphans.pop(rid, {}).values():  # arrival order
                self._orphan_count -= 1
                self._tagged(kind, member, title, rid, at)
        self._advance_to(decision.timestamp_ms)

    def _open_decision(self, entry: _Open) -> None:
        self._track(entry)
        heapq.heappush(self._closing, (entry.deadline_ms, entry.request_id))
        self.stats.decisions += 1
        while len(self._open) > self.max_open:  # the bound: the soonest due closes now
            _, rid = heapq.heappop(self._closing)
            self.stats.evicted += 1
            self._close(self._open.pop(rid))

    def _tagged(self, kind: str, member: int, title: int | None, rid: str, ts: int) -> None:
        entry = self._open.get(rid)
        if entry is None:
            if rid in self._closed:
                self.stats.late += 1
            else:
                self._hold_orphan(kind, member, title, rid, ts)
            return
        if member != entry.member_id:
            self.stats.foreign += 1
            return
        item = entry.item(title)
        if item is None:
            self.stats.off_page += 1
            return
        if kind == "impression":
            if item.exposed_ms is not None:
                self.stats.duplicates += 1
            elif ts > entry.deadline_ms:
                self.stats.late += 1
            else:
                item.exposed_ms = max(ts, entry.decision_ms)
                self._claim_held_play(entry, title, item)
        elif ts < entry.decision_ms:
            self.stats.early += 1
        elif ts > entry.deadline_ms:
            self.stats.late += 1
        elif item.rewarded:
            self.stats.duplicates += 1
        else:
            item.rewarded = True

    def _untagged_play(self, member: int, title: int, ts: int) -> None:
        key = (member, title)
        candidates = self._shown.get(key)
        if not candidates:
            return  # ordinary behaviour: no open page showed it
        best: tuple[int, str] | None = None  # (exposure, request id): latest wins, ties by id
        for rid in candidates:
            entry = self._open[rid]
            exposed = entry.exposed_ms(title)
            if exposed is not None and exposed <= ts <= entry.deadline_ms:
                if best is None or (exposed, rid) > best:
                    best = (exposed, rid)
        if best is None:
            if any(self._open[rid].exposed_ms(title) is None for rid in candidates):
                held = self._held_plays.setdefault(key, [])  # its impression may come later
                held.append(ts)
                del held[:-MAX_HELD_PLAYS]
            return
        item = self._open[best[1]].item(title)
        if item.rewarded:  # type: ignore[union-attr]
            self.stats.duplicates += 1
        else:
            item.rewarded = True  # type: ignore[union-attr]
            self.stats.untagged_plays_credited += 1

    def _claim_held_play(self, entry: _Open, title: int, item: _Item) -> None:
        held = self._held_plays.get((entry.member_id, title))
        if not held or item.rewarded:
            return
        for i, ts in enumerate(held):
            if item.exposed_ms <= ts <= entry.deadline_ms:  # type: ignore[operator]
                del held[i]
                item.rewarded = True
                self.stats.untagged_plays_credited += 1
                return

    def _hold_orphan(self, kind: str, member: int, title: int | None, rid: str, ts: int) -> None:
        if self.max_orphans == 0:
            self.stats.unmatched += 1
            return
        hold_until = max(ts, self.max_decision_ms if self.max_decision_ms is not None else ts)
        self._arrivals += 1
        self._orphans.setdefault(rid, {})[self._arrivals] = (hold_until, kind, member, title, ts)
        heapq.heappush(self._orphan_expiry, (hold_until, self._arrivals, rid))
        self._orphan_count += 1
        while self._orphan_count > self.max_orphans:  # a flood of made-up ids: drop the soonest due
            self._expire_orphans(None)

    # -- time ------------------------------------------------------------------------------------

    def _advance_to(self, decision_ms: int) -> None:
        if self.max_decision_ms is not None and decision_ms <= self.max_decision_ms:
            return
        self.max_decision_ms = decision_ms
        watermark = decision_ms - self.lateness_ms
        while self._closing and self._closing[0][0] < watermark:
            _, rid = heapq.heappop(self._closing)
            self._close(self._open.pop(rid))
        while self._forgetting and self._forgetting[0][0] < watermark:
            _, rid = heapq.heappop(self._forgetting)
            self._closed.pop(rid, None)
        self._expire_orphans(watermark)

    def _close(self, entry: _Open) -> None:
        touched = entry.touched
        for title, (artwork_id, propensity, row_id, position) in entry.arms.items():
            key = (entry.member_id, title)
            shown = self._shown.get(key)
            if shown is not None:
                shown.discard(entry.request_id)
                if not shown:
                    del self._shown[key]
                    self._held_plays.pop(key, None)
            item = touched.get(title)
            if item is None or item.exposed_ms is None:
                self.stats.unexposed += 1
                continue
            reward = 1.0 if item.rewarded else 0.0
            self._finished.append(Trial(entry.request_id, entry.member_id, title, artwork_id, propensity,
                                        reward, entry.policy, entry.policy_version, entry.decision_ms, row_id,
                                        position, entry.context))
            self.stats.trials += 1
            self.stats.rewards += int(reward)
        forget_at = entry.deadline_ms + self.window_ms + self.lateness_ms
        self._closed[entry.request_id] = forget_at
        heapq.heappush(self._forgetting, (forget_at, entry.request_id))

    def _expire_orphans(self, watermark: int | None) -> None:
        """Drop held events whose decision did not come in time (watermark None: the soonest due)."""
        while self._orphan_expiry and (watermark is None or self._orphan_expiry[0][0] < watermark):
            _, arrival, rid = heapq.heappop(self._orphan_expiry)
            held = self._orphans.get(rid)
            if held is None or held.pop(arrival, None) is None:
                continue  # already replayed: its decision came
            if not held:
                del self._orphans[rid]
            self._orphan_count -= 1
            self.stats.unmatched += 1
            if watermark is None:
                return

    # -- checkpoint ------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything the join holds, as JSON values (a checkpoint at one seq); open decisions by
        their record's seq and the titles exposed or rewarded since, [seq, [[title, exposed_ms,
        rewarded], ...]] (in opening order)."""
        return {
            "format": STATE_FORMAT,
            "config": {"window_ms": self.window_ms, "allowed_lateness_ms": self.lateness_ms,
                       "max_orphans": self.max_orphans, "max_open": self.max_open},
            "stats": self.stats.to_dict(),
            "max_decision_ms": self.max_decision_ms,
            "open": [_entry_state(e) for e in self._open.values()],
            "closed": [[rid, forget_at] for rid, forget_at in self._closed.items()],
            "held_plays": [[m, t, plays] for (m, t), plays in self._held_plays.items() if plays],
            "orphans": [[arrival, rid, *h] for rid, held in self._orphans.items() for arrival, h in held.items()],
            "arrivals": self._arrivals,
        }

    @staticmethod
    def decision_seqs(state: dict[str, Any]) -> list[int]:
        """The seqs of the decision records `from_state(state, records)` needs from the log."""
        _check_format(state)
        return [raw[0] for raw in state["open"] if isinstance(raw, list)]

    @classmethod
    def from_state(cls, state: dict[str, Any], records: pa.Table | Iterable[pa.Table] = ()) -> "RewardJoin":
        """The join `to_state` described; `records` are log rows holding at least the decision
        records at `decision_seqs(state)` (any other row is ignored). Raises ValueError naming a
        record that is missing or no longer parses."""
        _check_format(state)
        join = cls(**state["config"])
        join.stats = JoinStats(**state["stats"])
        join.max_decision_ms = state["max_decision_ms"]
        needed = set(cls.decision_seqs(state))
        found = _decisions_at(records, needed, join.window_ms)
        if len(found) < len(needed):
            missing = sorted(needed - set(found))
            raise ValueError(f"open: {len(missing)} decision record(s) not among the records given "
                             f"(first seq {missing[0]}); read them from the log")
        for raw in state["open"]:
            if isinstance(raw, list):  # [seq, touched]
                seq, touched = raw
                entry = found[seq]
            else:  # a whole entry (format 1, or restored from one)
                fixed = {k: v for k, v in raw.items() if k != "items"}
                entry = _Open(**fixed, arms={int(t): (art, p, row, pos) for t, art, p, row, pos, *_ in raw["items"]})
                touched = [[t, exposed, rewarded] for t, *_, exposed, rewarded in raw["items"]
                           if exposed is not None or rewarded]
            for title, exposed_ms, rewarded in touched:
                entry.touched[int(title)] = _Item(exposed_ms, rewarded)
            join._track(entry)
            join._closing.append((entry.deadline_ms, entry.request_id))
        for rid, forget_at in state["closed"]:
            join._closed[rid] = forget_at
            join._forgetting.append((forget_at, rid))
        join._held_plays = {(m, t): list(plays) for m, t, plays in state["held_plays"]}
        for arrival, rid, *held in sorted(state["orphans"]):
            join._orphans.setdefault(rid, {})[arrival] = tuple(held)  # type: ignore[assignment]
            join._orphan_expiry.append((held[0], arrival, rid))
        join._orphan_count = len(state["orphans"])
        join._arrivals = state["arrivals"]
        for heap in (join._closing, join._forgetting, join._orphan_expiry):
            heapq.heapify(heap)
        return join

    def _track(self, entry: _Open) -> None:
        """Hold an open decision: by request id, and by (member, title) for untagged plays."""
        for title in entry.arms:
            self._shown.setdefault((entry.member_id, title), set()).add(entry.request_id)
        self._open[entry.request_id] = entry


def _entry(decision: Decision, window_ms: int, seq: int | None) -> _Open:
    """An open decision from its record (a title shown in two rows keeps its first place: same
    artwork)."""
    entry = _Open(decision.request_id, decision.member_id, decision.timestamp_ms,
                  decision.timestamp_ms + window_ms, decision.policy, decision.policy_version,
                  dict(decision.context), seq=seq)
    arms = entry.arms
    for item in decision.items:
        if item.title_id not in arms:
            arms[item.title_id] = (item.artwork_id, float(item.propensity), item.row_id, int(item.position))
    return entry


def _entry_state(e: _Open) -> list | dict:
    if e.seq is None:  # restored from a format-1 state: no record to refer to
        return {"request_id": e.request_id, "member_id": e.member_id, "decision_ms": e.decision_ms,
                "deadline_ms": e.deadline_ms, "policy": e.policy, "policy_version": e.policy_version,
                "context": e.context,  # JSON values already (parsed from the log)
                "items": [[t, *arm, *_item_state(e.touched.get(t))] for t, arm in e.arms.items()]}
    return [e.seq, [[t, i.exposed_ms, i.rewarded] for t, i in e.touched.items()
                    if i.exposed_ms is not None or i.rewarded]]


def _item_state(item: _Item | None) -> tuple[int | None, bool]:
    return (None, False) if item is None else (item.exposed_ms, item.rewarded)


def _check_format(state: Any) -> None:
    if not isinstance(state, dict) or state.get("format") not in READ_FORMATS:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"format: expected reward-join state format {STATE_FORMAT}, got {got!r}")


def _decisions_at(records: pa.Table | Iterable[pa.Table], seqs: set[int], window_ms: int) -> dict[int, _Open]:
    """The open decisions rebuilt from the records at `seqs`, by seq."""
    found: dict[int, _Open] = {}
    if not seqs:
        return found
    wanted = pa.array(sorted(seqs), pa.int64())
    for table in [records] if isinstance(records, pa.Table) else records:
        if table.num_rows == 0:
            continue
        keep = pc.is_in(pc.cast(table.column("seq"), pa.int64()), value_set=wanted)
        for row in table.filter(pc.fill_null(keep, False)).to_pylist():
            if row.get("type") != "decision":
                raise ValueError(f"open: the record at seq {row['seq']} is a {row.get('type')!r}, not a decision")
            try:
                found[row["seq"]] = _entry(parse_decision(row), window_ms, row["seq"])
            except EventError as exc:
                raise ValueError(f"open: the decision record at seq {row['seq']} no longer parses: {exc}") from None
    return found


def _joined_rows(table: pa.Table) -> Iterable[tuple[str, int, int | None, str | None, int, dict | None]]:
    """(type, member, title, request_id, timestamp ms, full row for decisions) of the rows the join
    reads, in the table's order. Other event types are skipped before anything becomes Python."""
    if table.num_rows == 0:
        return
    keep = pc.is_in(table.column("type"), value_set=pa.array(JOINED_TYPES))
    rows = table.filter(pc.fill_null(keep, False))
    if rows.num_rows == 0:
        return
    cols = {name: (rows.column(name).to_pylist() if name in rows.column_names else [None] * rows.num_rows)
            for name in _ROW_COLUMNS}
    stamps = pc.cast(rows.column("timestamp"), pa.int64()).to_pylist()
    decisions = [i for i, t in enumerate(cols["type"]) if t == "decision"]
    full: dict[int, dict] = {}
    if decisions:
        picked = rows.take(pa.array(decisions)).to_pylist()
        full = dict(zip(decisions, picked))
    for i, (kind, member, title, rid) in enumerate(zip(*(cols[name] for name in _ROW_COLUMNS))):
        yield kind, member, title, rid, stamps[i], full.get(i)
