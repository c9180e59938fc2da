"""The nearline learner's loop without Ray: it follows a fake log by seq, learns in batches of N
trials or T seconds, publishes versions that learn the rewarding theme, and a learner re-created
from its checkpoint (after a clean stop, a crash between publish and checkpoint, or with trials
pending) ends in exactly the state of one that never stopped: no trial is learned twice."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from actors.bandit_learner import CHECKPOINT_FILE, BanditLearner, BanditLearnerError, LearnerSettings
from bandits.arms import ArmTable
from bandits.context import FEATURE_DIM, N_GENRES, member_vectors
from bandits.policies import PageContext
from bandits.rewards import DEFAULT_LATENESS_MS, DEFAULT_WINDOW_MS
from bandits.store import PolicyStore
from marquee.schema import ARTWORK_THEMES, Event, decision_event, events_to_table

T0 = 1_700_000_000_000
MIN = 60_000
TITLES = range(1, 7)
THEMES = ("dark", "comedy", "romance")  # every title has one artwork of each
GOOD = "dark"  # the theme members play


def arms() -> ArmTable:
    artwork = {t: [f"{t}-{k}" for k in range(len(THEMES))] for t in TITLES}
    theme = {f"{t}-{k}": th for t in TITLES for k, th in enumerate(THEMES)}
    return ArmTable.build(artwork, theme, {t: ["Action"] if t % 2 else ["Comedy"] for t in TITLES})


def member_vector(member: int, hour: int) -> list[float]:
    return [round(float(v), 6) for v in member_vectors(np.eye(3, N_GENRES)[member % 3], np.zeros(8), np.zeros(8),
                                                        member % 4, hour)]


def world_log(pages: int = 120, seed: int = 7, start_seq: int = 1) -> pa.Table:
    """Uniformly logged pages of 4 titles; a shown title is played with probability 0.6 under a
    dark artwork and 0.1 otherwise. Some impressions forge a propensity; some plays are late."""
    rng = np.random.default_rng(seed)
    events = []
    for p in range(pages):
        at, member, rid = T0 + p * MIN, p % 10, f"page-{p}"
        titles = rng.choice(list(TITLES), 4, replace=False).tolist()
        picks = rng.integers(0, len(THEMES), len(titles)).tolist()
        items = [(t, f"{t}-{k}", 1 / len(THEMES), "row-0", i) for i, (t, k) in enumerate(zip(titles, picks))]
        context = {"hour": (at // 3_600_000) % 24, "device": "tv", "member": member_vector(member, 20)}
        events.append(Event.parse(decision_event(rid, member, at, "tv", "US", "uniform", 0, items, {}, context)))
        for i, (t, k) in enumerate(zip(titles, picks)):
            events.append(Event.parse({"event_id": f"imp-{p}-{i}", "member_id": member, "title_id": t,
                                       "type": "impression", "timestamp": at + 500, "request_id": rid,
                                       "artwork": f"{t}-0", "propensity": 0.999}))
            played = rng.random() < (0.6 if THEMES[k] == GOOD else 0.1)
            if played:
                late = rng.random() < 0.1
                events.append(Event.parse({"event_id": f"play-{p}-{i}", "member_id": member, "title_id": t,
                                           "type": "play", "request_id": rid,
                                           "timestamp": at + (DEFAULT_WINDOW_MS + 1 if late else 2 * MIN)}))
    end = T0 + pages * MIN + DEFAULT_WINDOW_MS + DEFAULT_LATENESS_MS + 1
    events.append(Event.parse(decision_event("closing", 99, end, "tv", "US", "uniform", 0, [], {}, {})))
    return events_to_table(events, list(range(start_seq, start_seq + len(events))))


class FakeReader:
    """The event-log actor's read(since_seq, limit) and last_seq over a table."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.reads = 0

    def read(self, since_seq: int, limit: int) -> pa.Table:
        self.reads += 1
        return self.table.filter(pc.greater(self.table.column("seq"), since_seq)).slice(0, limit)

    def last_seq(self) -> int:
        return int(pc.max(self.table.column("seq")).as_py())


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def learner(tmp_path, table, clock=None, **settings) -> BanditLearner:
    defaults = {"policy": "linucb", "params": {"arm_model": "shared"}, "update_every": 60, "read_batch": 100}
    return BanditLearner(tmp_path / "ckpt", PolicyStore(tmp_path / "store"), arms(), FakeReader(table),
                         LearnerSettings(**{**defaults, **settings}), clock=clock or Clock())


def state_arrays(policy) -> dict[str, np.ndarray]:
    return {k: v for k, v in policy.to_state().items() if isinstance(v, np.ndarray)}


def assert_same_learning(a: BanditLearner, b: BanditLearner) -> None:
    for name, value in state_arrays(a.policy).items():
        np.testing.assert_allclose(state_arrays(b.policy)[name], value, rtol=1e-12, atol=1e-9, err_msg=name)
    ca, cb = a.member_counts(), b.member_counts()
    np.testing.assert_array_equal(ca.member_ids, cb.member_ids)
    np.testing.assert_array_equal(ca.impressions, cb.impressions)
    np.testing.assert_array_equal(ca.plays, cb.plays)
    sa, sb = a.stats(), b.stats()
    for key in ("trials", "rewards", "late", "trials_learned", "rewards_learned", "duplicates", "unmatched"):
        assert sa[key] == sb[key], key


@pytest.fixture(scope="module")
def log_table() -> pa.Table:
    return world_log()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, log_table) -> BanditLearner:
    one = learner(tmp_path_factory.mktemp("uninterrupted"), log_table)
    one.sync()
    one.update()  # learn the remainder below update_every
    return one


def test_it_follows_the_log_and_publishes_a_version_per_batch(tmp_path, log_table):
    one = learner(tmp_path, log_table)
    assert one.sync() == one.reader.last_seq()
    stats = one.stats()
    assert stats["trials"] == 120 * 4 and stats["pending_trials"] < 60
    assert 1 < stats["updates"] == one.policy_version <= stats["trials"] // 60  # each update >= 60 trials
    assert one.store.latest_version() == one.policy_version and one.policy.version == one.policy_version
    assert stats["trials_learned"] + stats["pending_trials"] == stats["trials"] and stats["lag_seq"] == 0
    assert 0 < stats["late"] and stats["rewards"] == stats["rewards_learned"] + sum(
        t.reward for t in one._pending)
    assert one.reader.reads >= log_table.num_rows // 100
    meta = one.store.load(one.policy_version).metadata
    assert meta["trials_learned"] == stats["trials_learned"]


def test_the_published_policy_learns_the_theme_members_play(uninterrupted):
    version, policy = uninterrupted.store.latest()
    assert version == uninterrupted.policy_version and policy.name == "linucb"
    table = arms()
    member = np.asarray([member_vector(3, 20)] * len(TITLES))
    features = []
    for t in TITLES:
        x, _, _ = table.shown_rows(member[:len(THEMES)], [t] * len(THEMES), [f"{t}-{k}" for k in range(len(THEMES))])
        features.append(x)
    classes = np.asarray([[ARTWORK_THEMES.index(th) for th in THEMES]] * len(TITLES))
    page = PageContext(np.stack(features), np.ones((len(TITLES), len(THEMES)), bool), classes)
    probabilities = policy.probabilities(page, 0)
    assert (probabilities.argmax(axis=1) == THEMES.index(GOOD)).all()
    counts = uninterrupted.store.load(version).member_counts
    dark = ARTWORK_THEMES.index(GOOD)
    rates = counts.plays.sum(axis=0) / np.maximum(counts.impressions.sum(axis=0), 1)
    assert rates[dark] > 0.4 and rates[ARTWORK_THEMES.index("comedy")] < 0.2


def test_forged_impression_propensities_do_not_reach_the_trials(tmp_path, log_table):
    one = learner(tmp_path, log_table, update_every=10_000)
    one.sync()
    assert {t.propensity for t in one._pending} == {1 / 3}


def test_an_update_is_due_after_update_interval_s_with_trials_pending(tmp_path, log_table):
    clock = Clock()
    one = learner(tmp_path, log_table, clock, update_every=10_000, update_interval_s=30.0)
    one.sync()
    assert one.policy_version == 0 and one.stats()["pending_trials"] == 480
    clock.now = 31.0
    one.sync()
    assert one.policy_version == 1 and one.stats()["trials_learned"] == 480


@pytest.mark.parametrize("cut", [150, 777])
def test_a_learner_recreated_from_its_checkpoint_learns_every_trial_once(tmp_path, log_table, uninterrupted, cut):
    clock = Clock()
    first = learner(tmp_path, log_table.slice(0, cut), clock, checkpoint_interval_s=1.0)
    first.sync()
    clock.now = 2.0
    first.checkpoint()
    first.reader.table = log_table  # more arrives, is read and learned, but no checkpoint is written
    first.step()
    del first  # killed
    second = learner(tmp_path, log_table, clock)
    assert second.loaded_seq == json.loads((tmp_path / "ckpt" / CHECKPOINT_FILE).read_text())["seq"]
    second.sync()
    second.update()
    assert_same_learning(uninterrupted, second)


def test_a_crash_between_publish_and_checkpoint_learns_nothing_twice(tmp_path, log_table, uninterrupted, monkeypatch):
    first = learner(tmp_path, log_table)
    calls = {"n": 0}
    real = BanditLearner.checkpoint

    def crash_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed after publishing")
        return real(self)

    monkeypatch.setattr(BanditLearner, "checkpoint", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        first.sync()
    monkeypatch.setattr(BanditLearner, "checkpoint", real)
    orphan = first.store.latest_version()
    assert orphan == 3 and json.loads((tmp_path / "ckpt" / CHECKPOINT_FILE).read_text())["policy_version"] == 2
    second = learner(tmp_path, log_table)
    assert second.policy_version == 2
    second.sync()
    second.update()
    assert second.policy_version > orphan  # the orphan's number is never reused
    assert_same_learning(uninterrupted, second)


def test_pending_trials_in_a_checkpoint_are_learned_once_after_a_restart(tmp_path, log_table, uninterrupted):
    clock = Clock()
    first = learner(tmp_path, log_table, clock, update_every=10_000, checkpoint_interval_s=1.0, read_batch=300)
    first.step()
    clock.now = 2.0
    first.step()  # a checkpoint is due: it holds the join's state and the pending trials
    first.step()  # read after the checkpoint: lost with the process
    assert first.policy_version == 0 and 0 < first.stats()["checkpoint_seq"] < first.applied_seq
    pending = len(json.loads((tmp_path / "ckpt" / CHECKPOINT_FILE).read_text())["pending"])
    del first
    second = learner(tmp_path, log_table, clock, update_every=10_000)
    assert len(second._pending) == pending > 0
    second.sync()
    second.update()
    assert_same_learning(uninterrupted, second)


def test_rows_already_applied_are_skipped_and_a_reader_breaking_the_contract_is_refused(tmp_path, log_table):
    one = learner(tmp_path, log_table, update_every=10_000)
    one.sync()
    before = one.stats()
    assert one.consume(log_table.slice(0, 50)) == 0 and one.stats()["trials"] == before["trials"]

    class Stuck(FakeReader):
        def read(self, since_seq, limit):
            return self.table.slice(0, limit)

    one.reader = Stuck(log_table)
    with pytest.raises(BanditLearnerError, match="breaks the read"):
        one.step()


def test_lag_is_the_distance_to_the_logs_last_seq(tmp_path, log_table):
    one = learner(tmp_path, log_table, read_batch=40)
    one.step()
    assert one.stats()["lag_seq"] == log_table.num_rows - 40


def test_trials_of_unknown_arms_or_without_a_member_vector_are_counted_not_learned(tmp_path):
    events = [
        decision_event("a", 1, T0, "tv", "US", "uniform", 0, [(1, "1-9", 0.5, "r", 0), (2, "2-0", 0.5, "r", 1)], {},
                       {"member": member_vector(1, 20)}),
        decision_event("b", 1, T0, "tv", "US", "uniform", 0, [(3, "3-0", 0.5, "r", 0)], {}, {"member": [1.0]}),
        {"event_id": "i1", "member_id": 1, "title_id": 1, "type": "impression", "timestamp": T0, "request_id": "a"},
        {"event_id": "i2", "member_id": 1, "title_id": 2, "type": "impression", "timestamp": T0, "request_id": "a"},
        {"event_id": "i3", "member_id": 1, "title_id": 3, "type": "impression", "timestamp": T0, "request_id": "b"},
        decision_event("z", 2, T0 + DEFAULT_WINDOW_MS + DEFAULT_LATENESS_MS + 1, "tv", "US", "uniform", 0, [], {}, {}),
    ]
    table = events_to_table([Event.parse(e) for e in events], list(range(1, len(events) + 1)))
    one = learner(tmp_path, table, update_every=1)
    one.sync()
    stats = one.stats()
    assert (stats["trials"], stats["unknown_arm"], stats["bad_context"], stats["trials_learned"]) == (3, 1, 1, 1)
    assert one.policy_version == 1


def test_a_checkpoint_of_another_policy_is_refused_naming_both(tmp_path, log_table):
    one = learner(tmp_path, log_table)
    one.sync()
    with pytest.raises(BanditLearnerError, match="'linucb'.*'linear_ts'"):
        learner(tmp_path, log_table, policy="linear_ts", params={})


@pytest.mark.parametrize("settings, field", [({"update_every": 0}, "update_every"),
                                             ({"params": {"alpha": -1}}, "alpha"),
                                             ({"policy": "nope"}, "policy"),
                                             ({"update_interval_s": 0}, "update_interval_s"),
                                             ({"window_ms": 0}, "window_ms"),
                                             ({"params": {"n_classes": 3}}, "params.n_classes")])
def test_bad_settings_are_refused_naming_the_field(settings, field):
    with pytest.raises(ValueError, match=field):
        LearnerSettings(**settings)


def test_the_learner_is_the_dimension_serving_scores(uninterrupted):
    assert uninterrupted.policy.dim == FEATURE_DIM


def test_a_checkpoint_reads_its_open_decisions_back_from_the_log_and_says_when_it_cannot(tmp_path, log_table):
    """The checkpoint names open decisions by seq (their records stay in the log): a restart
    re-reads them from the oldest one on; without the log, or with them gone, it refuses by name."""
    cut = 200
    one = learner(tmp_path, log_table.slice(0, cut))
    one.sync()
    one.checkpoint()
    state = json.loads((tmp_path / "ckpt" / CHECKPOINT_FILE).read_text())
    seqs = [raw[0] for raw in state["join"]["open"]]
    assert seqs and all(isinstance(s, int) for s in seqs)
    # [seq, [[title, exposed_ms, rewarded], ...]]: no arms, propensities or contexts copied in
    assert all(len(raw) == 2 and all(len(t) == 3 for t in raw[1]) for raw in state["join"]["open"])
    assert "-0" not in json.dumps(state["join"]["open"])  # no artwork id
    again = learner(tmp_path, log_table.slice(0, cut))
    assert again.join.open_decisions == one.join.open_decisions and again.reader.reads >= 1
    again.reader = None
    with pytest.raises(BanditLearnerError, match="no reader"):
        BanditLearner(tmp_path / "ckpt", PolicyStore(tmp_path / "store"), arms(), None, one.settings)
    early = log_table.filter(pc.less(log_table.column("seq"), min(seqs) + 1))  # the later records are gone
    with pytest.raises(BanditLearnerError, match="cannot be restored.*decision record"):
        learner(tmp_path, early)


def test_an_unfinished_checkpoint_of_a_killed_learner_is_removed_and_the_last_whole_one_used(tmp_path, log_table):
    one = learner(tmp_path, log_table.slice(0, 100))
    one.sync()
    one.checkpoint()
    dead = tmp_path / "ckpt" / f".{CHECKPOINT_FILE}.4242.deadbeef.tmp"
    dead.write_bytes(b'{"format": 2, "seq"')  # killed mid-write
    again = learner(tmp_path, log_table.slice(0, 100))
    assert not dead.exists() and again.loaded_seq == one.applied_seq
