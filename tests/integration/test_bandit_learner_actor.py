"""The bandit learner as a named Ray actor: it catches up with a log actor, publishes policy
versions to the store, polls for what arrives later, and after being killed resumes from its
checkpoint without learning a trial twice.

The event log is a tiny fake actor honouring read(since_seq, limit) and last_seq, so this test
does not depend on actors/events.py."""

from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.bandit_learner import BanditLearnerError, start_bandit_learner
from bandits.context import MEMBER_DIM
from bandits.rewards import DEFAULT_LATENESS_MS, DEFAULT_WINDOW_MS
from bandits.store import PolicyStore
from marquee.schema import Event, decision_event, events_to_table
from producers.world.generate import generate_world
from tests.live_app import wait_for

T0 = 1_700_000_000_000
MIN = 60_000


def page_events(world, start_page: int, pages: int, start_seq: int) -> pa.Table:
    """Pages of 3 titles each, all impressed, the first title of each page played; then a closing
    decision that ends every window."""
    art = pq.read_table(world / "artwork.parquet").to_pylist()
    first_art = {}
    for row in art:
        first_art.setdefault(row["title_id"], row["artwork_id"])
    titles = sorted(first_art)
    events = []
    for p in range(start_page, start_page + pages):
        at, member, rid = T0 + p * MIN, p % 5, f"page-{p}"
        shown = [titles[(p + k) % len(titles)] for k in range(3)]
        items = [(t, first_art[t], 0.5, "row-0", k) for k, t in enumerate(shown)]
        context = {"hour": 20, "device": "tv", "member": [0.0] * MEMBER_DIM}
        events.append(decision_event(rid, member, at, "tv", "US", "uniform", 0, items, {}, context))
        for k, t in enumerate(shown):
            events.append({"event_id": f"imp-{p}-{k}", "member_id": member, "title_id": t, "type": "impression",
                           "timestamp": at + 100, "request_id": rid})
        events.append({"event_id": f"play-{p}", "member_id": member, "title_id": shown[0], "type": "play",
                       "timestamp": at + MIN, "request_id": rid})
    end = T0 + (start_page + pages) * MIN + DEFAULT_WINDOW_MS + DEFAULT_LATENESS_MS + 1
    events.append(decision_event(f"close-{start_page}", 99, end, "tv", "US", "uniform", 0, [], {}, {}))
    parsed = [Event.parse(e) for e in events]
    return events_to_table(parsed, list(range(start_seq, start_seq + len(parsed))))


def test_learner_actor_publishes_polls_and_resumes_after_a_kill(ray_cluster, tmp_path):
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class FakeLog:  # defined here (pickled by value): workers cannot import tests
        def __init__(self):
            self.table = None

        def append(self, table):
            self.table = table if self.table is None else pa.concat_tables([self.table, table])
            return self.table.num_rows

        def read(self, since_seq, limit, types=None, columns=None):  # a superset of those types: allowed
            import pyarrow.compute as pc

            return self.table.filter(pc.greater(self.table.column("seq"), since_seq)).slice(0, limit)

        def read_ipc(self, since_seq, limit, types=None, columns=None):  # as the real log
            from state.eventlog.wire import table_to_ipc

            return table_to_ipc(self.read(since_seq, limit, types, columns))

        def last_seq(self):
            import pyarrow.compute as pc

            return pc.max(self.table.column("seq")).as_py()

    world = tmp_path / "world"
    generate_world(members=20, titles=20, days=1, seed=1, out=world)
    first = page_events(world, 0, 20, 1)
    log = FakeLog.remote()
    ray.get(log.append.remote(first))
    settings = {"update_every": 10, "poll_interval_s": 0.05, "policy": "linucb", "params": {"arm_model": "shared"}}
    store = PolicyStore(tmp_path / "store")
    name = "bandit-learner-test"
    actor = start_bandit_learner(tmp_path / "ckpt", log, store.root, world, settings, name=name)
    try:
        assert ray.get(actor.sync.remote()) == first.num_rows
        ray.get(actor.update.remote())  # learn the remainder now
        stats = ray.get(actor.stats.remote())
        assert (stats["trials"], stats["rewards"], stats["trials_learned"]) == (60, 20, 60)
        assert stats["lag_seq"] == 0 and stats["policy_version"] == store.latest_version() >= 1
        assert store.load(stats["policy_version"]).member_counts is not None
        with pytest.raises(BanditLearnerError, match="already serves"):
            start_bandit_learner(tmp_path / "elsewhere", log, store.root, world, settings, name=name)

        ray.kill(actor, no_restart=False)
        wait_for(lambda: ray.get(actor.stats.remote())["pid"] != stats["pid"], every_s=0.05, what="the restarted learner")
        again = ray.get(actor.stats.remote())
        assert again["loaded_seq"] == first.num_rows and again["trials_learned"] == 60  # nothing twice
        assert again["policy_version"] == stats["policy_version"]

        ray.get(log.append.remote(page_events(world, 100, 10, first.num_rows + 1)))
        wait_for(lambda: ray.get(actor.stats.remote())["trials"] == 90, every_s=0.05, what="the poller to join new pages")
        ray.get(actor.update.remote())
        final = ray.get(actor.stats.remote())
        assert final["trials_learned"] == 90 and final["policy_version"] == store.latest_version() > again["policy_version"]
    finally:
        ray.kill(actor, no_restart=True)
