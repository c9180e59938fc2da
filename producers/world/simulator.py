"""Day-by-day simulation of members' sessions against the catalog: homepage impressions with
uniformly random artwork (propensity logged), list edits, searches, plays episode by episode,
progress, completions and thumbs (see `Behaviour` for the model).

Days are simulated in order with member state kept sparse, so events come out in global
timestamp order and memory stays bounded by one day of events.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import date, datetime, timezone
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marquee.names import DAY_MS
from marquee.schema import DEVICES, EVENT_TYPES, STORED_EVENT_SCHEMA, TIMESTAMP
from producers.world.behaviour import (
    HOUR_P,
    play_logit,
    MAX_BINGE,
    MAX_POSITIONS,
    MAX_ROWS,
    NEW_RELEASE_DAYS,
    ROW_COEFFS,
    ROW_CW,
    ROW_GENRE0,
    ROW_NAMES,
    ROW_NEW,
    ROW_POP,
    ROW_SEARCH,
    ROW_TOP,
    ROW_TREND,
    Behaviour,
)
from producers.world.catalog import Catalog
from producers.world.event_columns import (
    EPISODE_PAYLOADS,
    TYPE_CODE,
    EventColumns,
    take,
)
from producers.world.members import Members
from producers.world.sampling import group_cumsum, group_starts, gumbel, sigmoid
from producers.world.viewing_state import ViewingState
from producers.world.vocabulary import COUNTRIES, GENRES


def epoch_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


_BLAS = None


def _single_threaded_blas():
    """The simulation's matrix products are small: OpenBLAS threads only fight over the cores
    (measured here: 2.8 s single-threaded against 5-14 s threaded on a busy 2-core machine)."""
    global _BLAS
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - optional speed-up
        return contextlib.nullcontext()
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class Simulator:
    """Day-by-day behaviour of members against the catalog (see `Behaviour` for the model)."""

    def __init__(self, catalog: Catalog, members: Members, behaviour: Behaviour, seed: int,
                 start: date, days: int) -> None:
        self.catalog, self.members, self.b = catalog, members, behaviour
        self.seed, self.days = seed, days
        self.start_day = (start - date(1970, 1, 1)).days
        self.start_ms = epoch_ms(start)
        self.activity_scale = 1.0
        self.batch = int(max(16, min(2048, 3_000_000 // catalog.n)))
        self.release_rel = (catalog.release_day - self.start_day).astype(np.float32)  # days from start
        self.artwork_ids = catalog.artwork_table().column("artwork_id").combine_chunks()
        compact = dict(sort_keys=True, separators=(",", ":"))
        self.payloads = pa.array(
            [json.dumps({"episode": e}, **compact) for e in range(1, EPISODE_PAYLOADS + 1)]
            + [json.dumps({"query": q}, **compact) for q in catalog.query]
            + [json.dumps({"query": g.lower()}, **compact) for g in GENRES], pa.string())

    # -- sessions ---------------------------------------------------------------------------

    def _day_factor(self, day: int) -> float:
        weekday = (self.start_day + day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        return 1.2 if weekday >= 4 else 0.92  # Friday to Sunday are busier

    def expected_sessions(self, subset: np.ndarray | None = None) -> float:
        members = np.arange(self.members.n) if subset is None else subset
        activity = self.members.activity[members] * self.activity_scale
        join_rel = self.members.join_day[members] - self.start_day
        return float(sum(activity[join_rel <= d].sum() * self._day_factor(d) for d in range(self.days)))

    def _sessions(self, rng: np.random.Generator, day: int, subset: np.ndarray):
        mem = self.members
        rate = mem.activity[subset] * self.activity_scale * self._day_factor(day)
        rate = np.where(mem.join_day[subset] - self.start_day <= day, rate, 0.0)
        who = np.repeat(subset, rng.poisson(rate))
        seconds = rng.choice(24, size=who.size, p=HOUR_P) * 3600 + rng.integers(0, 3600, who.size)
        order = np.lexsort((seconds, who))
        who, seconds = who[order], seconds[order]
        rounds = np.arange(who.size) - group_starts(who)  # a member's n-th session that day
        count = mem.device_count[who]
        pick = np.where((count > 1) & (rng.random(who.size) >= 0.6),
                        1 + (rng.random(who.size) * np.maximum(count - 1, 1)).astype(np.int64), 0)
        device = mem.devices[who, pick]
        t0 = self.start_ms + day * DAY_MS + seconds * 1000 + rng.integers(0, 1000, who.size)
        return who, t0, device, seconds // 3600, rounds

    def day_columns(self, subset: np.ndarray | None = None, stream: int = 3,
                    progress: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Each day's events (in timestamp order) as numpy columns. Events a session causes
        after midnight are carried into the next day; those after the window's end are cut."""
        rng = np.random.default_rng([self.seed, stream])
        subset = np.arange(self.members.n) if subset is None else np.asarray(subset, np.int64)
        state = ViewingState(self.catalog.n)
        carry: dict[str, np.ndarray] | None = None
        started, total = time.perf_counter(), 0
        for day in range(self.days):
            events = EventColumns()
            events.extend(carry)
            who, t0, device, hour, rounds = self._sessions(rng, day, subset)
            with _single_threaded_blas():
                for r in range(int(rounds.max()) + 1 if rounds.size else 0):
                    idx = np.flatnonzero(rounds == r)
                    for lo in range(0, idx.size, self.batch):
                        b = idx[lo: lo + self.batch]
                        self._simulate(rng, state, events, who[b], t0[b], device[b], hour[b])
            columns = events.concat()
            columns = take(columns, np.argsort(columns["ts"], kind="stable"))
            cut = int(np.searchsorted(columns["ts"], self.start_ms + (day + 1) * DAY_MS))
            carry = take(columns, slice(cut, None))
            total += cut
            if progress:
                print(f"world: day {day + 1}/{self.days}: {who.size:,} sessions, {total:,} events "
                      f"({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)
            if cut:
                yield take(columns, slice(0, cut))

    def event_tables(self, progress: bool = False) -> Iterator[pa.Table]:
        seq = 0
        for columns in self.day_columns(progress=progress):
            yield self._table(columns, seq)
            seq += columns["ts"].size

    # -- one batch of sessions (distinct members) ----------------------------------------------

    def _simulate(self, rng: np.random.Generator, state: ViewingState, out: EventColumns,
                  m: np.ndarray, t0: np.ndarray, dev: np.ndarray, hour: np.ndarray) -> None:
        cat, mem, b = self.catalog, self.members, self.b
        S, T = m.size, cat.n
        episodes_done, fraction, listed = state.lookup(m)
        completed = episodes_done >= cat.episodes[None, :]
        in_progress = ~completed & ((episodes_done > 0) | (fraction > 0))
        match = mem.taste[m] @ cat.vec.T
        estimate = mem.est_taste[m] @ cat.vec.T
        now = ((t0 - self.start_ms) / DAY_MS).astype(np.float32)
        age = now[:, None] - self.release_rel[None, :]
        eligible = (cat.avail[mem.country[m]] & (age >= 0)
                    & (cat.maturity[None, :] <= mem.maturity[m][:, None]))
        recency = np.exp(-np.maximum(age, 0) / np.float32(b.recency_days))
        pop = cat.pop_z[mem.country[m]]

        # Some sessions start by tidying the list.
        tidy = np.flatnonzero(listed.any(axis=1) & (rng.random(S) < b.list_remove_per_session))
        if tidy.size:
            gone = np.argmax(rng.random((tidy.size, T)) * listed[tidy], axis=1)
            listed[tidy, gone] = False
            out.add(tidy.size, member=m[tidy], title=gone, type=TYPE_CODE["my_list_remove"],
                    ts=t0[tidy] + 500, device=dev[tidy])

        # The homepage: rows of titles, each with a uniformly random artwork.
        n_rows = 1 + rng.binomial(MAX_ROWS - 1, np.asarray(b.more_rows)[dev])
        pick = (rng.random(S) * mem.favorite_count[m]).astype(np.int64)
        favorite = mem.favorites[m, pick]
        other = (favorite + 1 + rng.integers(0, len(GENRES) - 1, S)) % len(GENRES)
        pool = np.column_stack([np.full(S, ROW_POP), np.full(S, ROW_TREND), np.full(S, ROW_NEW),
                                ROW_GENRE0 + favorite, ROW_GENRE0 + other])
        cw = np.where(in_progress.any(axis=1) & (rng.random(S) < 0.9), ROW_CW, -1)
        plan = np.column_stack([cw, np.full(S, ROW_TOP), rng.permuted(pool, axis=1)])
        plan = np.take_along_axis(plan, np.argsort(plan < 0, axis=1, kind="stable"), axis=1)[:, :MAX_ROWS]
        plan[np.arange(MAX_ROWS)[None, :] >= n_rows[:, None]] = -1
        looks = rng.poisson(np.asarray(b.positions_seen)[dev][:, None], (S, MAX_ROWS))
        seen = np.minimum(2 + looks, MAX_POSITIONS)
        shown = np.zeros((S, T), bool)
        k = min(MAX_POSITIONS, T)
        parts = []
        for slot in range(MAX_ROWS):
            g = np.flatnonzero(plan[:, slot] >= 0)
            if not g.size:
                break
            code = plan[g, slot]
            kind = np.minimum(code, ROW_GENRE0)
            coef = ROW_COEFFS[kind]
            logits = (coef[:, :1] * estimate[g] + coef[:, 1:2] * pop[g] + coef[:, 2:3] * recency[g]
                      + coef[:, 3:] * completed[g])
            allowed = eligible[g] & ~shown[g]
            allowed &= np.where((kind == ROW_CW)[:, None], in_progress[g], True)
            allowed &= np.where((kind == ROW_NEW)[:, None], age[g] <= NEW_RELEASE_DAYS, True)
            genre_rows = np.flatnonzero(kind == ROW_GENRE0)
            allowed[genre_rows] &= cat.genre_matrix.T[code[genre_rows] - ROW_GENRE0]
            keys = logits + gumbel(rng, (g.size, T))
            keys[~allowed] = -np.inf
            top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
            top_keys = np.take_along_axis(keys, top, axis=1)
            order = np.argsort(-top_keys, axis=1, kind="stable")
            top, top_keys = np.take_along_axis(top, order, 1), np.take_along_axis(top_keys, order, 1)
            valid = np.isfinite(top_keys) & (np.arange(k)[None, :] < seen[g, slot][:, None])
            rr, pos = np.nonzero(valid)
            s, t = g[rr], top[rr, pos]
            shown[s, t] = True
            parts.append((s, t, code[rr], np.full(s.size, slot), pos))
        s, t, row, slot, pos = (np.concatenate(x) for x in zip(*parts))
        order = np.lexsort((pos, slot, s))
        s, t, row, slot, pos = s[order], t[order], row[order], slot[order], pos[order]
        art = cat.art_offset[t] + (rng.random(s.size) * cat.art_count[t]).astype(np.int64)
        shown_at = t0[s] + 1000 + slot * 4000 + pos * 500
        out.add(s.size, member=m[s], title=t, type=TYPE_CODE["impression"], ts=shown_at, device=dev[s],
                row=row, position=pos, art=art, propensity=1.0 / cat.art_count[t])

        # Which impressions get played (at most a couple per session, in browsing order).
        logit = play_logit(b, match[s, t], pop[s, t], recency[s, t], mem.theme_affinity[m[s], cat.art_theme[art]],
                           pos, slot, hour[s], dev[s], in_progress[s, t], completed[s, t], listed[s, t])
        played = rng.random(s.size) < sigmoid(logit)
        played &= group_cumsum(played.astype(np.int64), s) <= b.max_plays_per_session

        add = ~played & ~listed[s, t] & ~completed[s, t]
        add &= rng.random(s.size) < sigmoid(b.list_add_bias + b.list_add_match * match[s, t])
        listed[s[add], t[add]] = True
        out.add(int(add.sum()), member=m[s[add]], title=t[add], type=TYPE_CODE["my_list_add"],
                ts=shown_at[add] + 1500, device=dev[s[add]], row=row[add], position=pos[add], art=art[add])

        # Searches after browsing: for a title not shown (often played), or for a genre.
        searched_at = t0 + 2000 + n_rows * 4000 + 10000
        searching = rng.random(S) < np.asarray(b.search_rate)[dev]
        for_title = searching & (rng.random(S) < b.search_for_title)
        q = np.flatnonzero(for_title)
        keys = 3.0 * match[q] + pop[q] + gumbel(rng, (q.size, T))
        keys[~(eligible[q] & ~completed[q] & ~shown[q])] = -np.inf
        found = np.argmax(keys, axis=1) if q.size else np.zeros(0, np.int64)
        ok = np.isfinite(keys[np.arange(q.size), found])
        q, found = q[ok], found[ok]
        out.add(q.size, member=m[q], title=found, type=TYPE_CODE["search"], ts=searched_at[q],
                device=dev[q], payload=EPISODE_PAYLOADS + found)
        by_genre = np.flatnonzero(searching & ~for_title)
        out.add(by_genre.size, member=m[by_genre], type=TYPE_CODE["search"], ts=searched_at[by_genre],
                device=dev[by_genre], payload=EPISODE_PAYLOADS + T + favorite[by_genre])
        q_play = rng.random(q.size) < b.search_play

        # Plays: from the homepage and from search.
        p_s = np.concatenate([s[played], q[q_play]])
        p_t = np.concatenate([t[played], found[q_play]])
        p_rel = np.concatenate([shown_at[played] - t0[s[played]], searched_at[q[q_play]] - t0[q[q_play]]])
        p_rel = p_rel + rng.integers(2000, 20000, p_s.size)
        p_row = np.concatenate([row[played], np.full(int(q_play.sum()), ROW_SEARCH)])
        p_pos = np.concatenate([pos[played], np.full(int(q_play.sum()), -1)])
        p_art = np.concatenate([art[played], np.full(int(q_play.sum()), -1)])
        self._watch(rng, out, m, t0, dev, p_s, p_t, p_rel, p_row, p_pos, p_art,
                    match, completed, episodes_done, fraction, listed)
        state.store(m, episodes_done, fraction, listed)

    def _watch(self, rng, out, m, t0, dev, p_s, p_t, p_rel, p_row, p_pos, p_art,
               match, completed, episodes_done, fraction, listed) -> None:
        """Playback: episode by episode, progress at each quarter and where the member stopped,
        completions, thumbs; updates the dense state arrays in place."""
        cat, b = self.catalog, self.b
        n = p_s.size
        restart = completed[p_s, p_t]  # a re-watch starts over but never un-finishes a title
        ep = np.where(restart, 0, episodes_done[p_s, p_t]).astype(np.int64)
        frac = np.where(restart, 0.0, fraction[p_s, p_t]).astype(np.float64)
        series = cat.is_series[p_t]
        first_episode = ep.copy()
        binge = rng.geometric(1 - np.asarray(b.binge_continue)[dev[p_s]])
        budget = np.where(series, np.minimum(binge, MAX_BINGE), 1)
        fit = match[p_s, p_t]
        finish_p = sigmoid(b.complete_bias + b.complete_match * fit + b.complete_runtime * cat.runtime_z[p_t]
                            + np.asarray(b.complete_device)[dev[p_s]])
        runtime_ms = cat.runtime[p_t] * 60_000.0
        cursor = np.zeros(n)  # ms since the play started
        alive = np.ones(n, bool)
        any_done = np.zeros(n, bool)
        finished = np.zeros(n, bool)
        later = EventColumns()  # (play index in `member`, offset from play start in `ts`)
        for step in range(MAX_BINGE):
            i = np.flatnonzero(alive)
            if not i.size:
                break
            done = rng.random(i.size) < finish_p[i]
            f0 = frac[i]
            end = np.where(done, 1.0, f0 + (1 - f0) * rng.uniform(0.05, 0.9, i.size))
            payload = np.where(series[i], np.minimum(ep[i], EPISODE_PAYLOADS - 1), -1)
            for quarter in (0.25, 0.5, 0.75):
                hit = (f0 < quarter) & (quarter < end)
                later.add(int(hit.sum()), member=i[hit], type=TYPE_CODE["progress"],
                          ts=cursor[i[hit]] + (quarter - f0[hit]) * runtime_ms[i[hit]],
                          value=quarter, payload=payload[hit])
            stop = cursor[i] + (end - f0) * runtime_ms[i]
            later.add(i.size, member=i, type=TYPE_CODE["progress"], ts=stop, value=end, payload=payload)
            later.add(int(done.sum()), member=i[done], type=TYPE_CODE["completion"], ts=stop[done] + 1000,
                      value=1.0, payload=payload[done])
            cursor[i] = stop + 1000 * done
            ep[i] += done
            frac[i] = np.where(done, 0.0, end)
            any_done[i] |= done
            finished[i] |= ep[i] >= cat.episodes[p_t[i]]
            alive[i] = done & ~finished[i] & (step + 1 < budget[i])
            cursor[i] += np.where(alive[i], 15_000, 0)

        # Plays in one session run one after another.
        order = np.lexsort((p_rel, p_s))
        length = cursor[order] + 30_000
        began = np.empty(n)
        began[order] = p_rel[order] + group_cumsum(length, p_s[order]) - length
        start = t0[p_s] + began.astype(np.int64)
        out.add(n, member=m[p_s], title=p_t, type=TYPE_CODE["play"], ts=start, device=dev[p_s],
                row=p_row, position=p_pos, art=p_art,
                payload=np.where(series, np.minimum(first_episode, EPISODE_PAYLOADS - 1), -1))
        watched = later.concat()
        j = watched["member"]
        out.add(j.size, member=m[p_s[j]], title=p_t[j], type=watched["type"],
                ts=start[j] + watched["ts"].astype(np.int64), device=dev[p_s[j]],
                value=watched["value"], payload=watched["payload"])

        thumb = np.flatnonzero(rng.random(n) < np.where(any_done, b.thumb_rate_completed, b.thumb_rate))
        up = rng.random(thumb.size) < sigmoid(b.thumb_match * fit[thumb] - 0.5 + 0.8 * any_done[thumb])
        out.add(thumb.size, member=m[p_s[thumb]], title=p_t[thumb], type=TYPE_CODE["thumb"],
                ts=start[thumb] + cursor[thumb].astype(np.int64) + 5000, device=dev[p_s[thumb]],
                value=np.where(up, 1.0, -1.0))
        drop = np.flatnonzero(listed[p_s, p_t] & finished & (rng.random(n) < b.list_remove_on_finish))
        listed[p_s[drop], p_t[drop]] = False
        out.add(drop.size, member=m[p_s[drop]], title=p_t[drop], type=TYPE_CODE["my_list_remove"],
                ts=start[drop] + cursor[drop].astype(np.int64) + 8000, device=dev[p_s[drop]])

        keep = ~restart
        episodes_done[p_s[keep], p_t[keep]] = ep[keep]
        fraction[p_s[keep], p_t[keep]] = frac[keep]

    # -- Arrow ----------------------------------------------------------------------------------

    def _table(self, c: dict[str, np.ndarray], seq0: int) -> pa.Table:
        n = c["ts"].size
        seq = pa.array(np.arange(seq0, seq0 + n, dtype=np.int64))
        title = c["title"]

        def coded(codes: np.ndarray, dictionary: pa.Array) -> pa.Array:
            indices = pa.array(codes.astype(np.int32), pa.int32(), mask=codes < 0)
            return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())

        art = c["art"]
        columns = {
            "event_id": pc.binary_join_element_wise(f"w{self.seed}-", pc.cast(seq, pa.string()), ""),
            "member_id": pa.array(c["member"] + 1, pa.int64()),
            "title_id": pa.array(title + 1, pa.int64(), mask=title < 0),
            "type": coded(c["type"], pa.array(EVENT_TYPES)),
            "timestamp": pa.array(c["ts"], pa.int64()).cast(TIMESTAMP),
            "country": coded(self.members.country[c["member"]], pa.array(COUNTRIES)),
            "device": coded(c["device"], pa.array(DEVICES)),
            "row": coded(c["row"], pa.array(ROW_NAMES)),
            "position": pa.array(c["position"], pa.int32(), mask=c["position"] < 0),
            "artwork": self.artwork_ids.take(pa.array(art, pa.int64(), mask=art < 0)),
            "propensity": pa.array(c["propensity"], pa.float64(), mask=np.isnan(c["propensity"])),
            "value": pa.array(c["value"], pa.float64(), mask=np.isnan(c["value"])),
            "experiments": pa.nulls(n, pa.string()),
            "payload": coded(c["payload"], self.payloads),
            "request_id": pa.nulls(n, pa.string()),  # simulated sessions are not served pages
            "seq": seq,
        }
        arrays = [columns[f.name] for f in STORED_EVENT_SCHEMA]
        return pa.Table.from_arrays(arrays, schema=STORED_EVENT_SCHEMA)


def calibrate(sim: Simulator, target: int) -> float:
    """Activity scale so the world has about `target` events: a pilot run on a sample of members
    measures events per expected session at a first-guess scale."""
    base = sim.expected_sessions()
    if base <= 0:
        return 1.0
    guess = target / (15.0 * base)
    sim.activity_scale = guess
    per_member = base * guess / sim.members.n
    k = int(min(sim.members.n, max(200, np.ceil(4000 / max(per_member, 1e-9)))))
    subset = np.sort(np.random.default_rng([sim.seed, 4]).choice(sim.members.n, k, replace=False))
    pilot_events = sum(c["ts"].size for c in sim.day_columns(subset, stream=5))
    pilot_sessions = sim.expected_sessions(subset)
    if pilot_events == 0 or pilot_sessions <= 0:
        return guess
    return target / (pilot_events / pilot_sessions * base)
