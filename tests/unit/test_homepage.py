"""The homepage orchestrator with fake stages: page shape, dedupe, rules, and every fallback."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from serving_fixtures import catalog_of, title

from actors.member_state import ContinueWatching, MemberSnapshot
from deployments.candidates import Retrieved
from deployments.catalog import MemberProfile, ServingCatalog
from deployments.contracts import Candidate
from deployments.homepage import Homepage, HomepageRequest
from deployments.page_builder import build_homepage
from deployments.page_config import ArtworkConfig, HomepageConfig

TS = 1_700_000_000_000
VERSION = "v0007"
GENRE_OF = {**{t: "Drama" for t in range(1, 11)}, **{t: "Comedy" for t in range(11, 21)},
            **{t: "Action" for t in range(21, 31)}}


def make_catalog() -> ServingCatalog:
    titles = catalog_of(*(title(t, (g,), countries=("US", "FR")) for t, g in GENRE_OF.items()))
    ranked = [(t, float(100 - t)) for t in sorted(GENRE_OF)]
    return ServingCatalog(
        titles=titles,
        artwork={t: (f"art-{t}-a", f"art-{t}-b", f"art-{t}-c") for t in titles},
        members={1: MemberProfile("US", 3), 2: MemberProfile("FR", 1)},
        top_in_country={"US": [(t, float(50 - t)) for t in range(21, 31)],
                        "FR": [(t, float(50 - t)) for t in range(1, 11)]},
        popular=ranked,
        trending=[(t, 1.0) for t in range(11, 21)],
        new_releases=[(t, 1.0) for t in range(1, 11)],
        as_of_ms=TS,
        genres=("Action", "Comedy", "Drama"),
        plays_all=dict(ranked),
    )


CATALOG = make_catalog()


def snapshot(member_id: int = 1, **kw) -> MemberSnapshot:
    base = dict(continue_watching=[ContinueWatching(7, 0.4, TS, None, None)], my_list=[8], thumbs={9: 1},
                recently_watched=[2, 7], known=True, recent_ms=[TS, TS - 1000], first_event_ms=TS - 10**9,
                titles_played=2)
    return MemberSnapshot(member_id=member_id, **{**base, **kw})


def retrieved(**kw) -> Retrieved:
    ids = np.arange(1, 31)
    base = dict(
        model_version=VERSION,
        title_ids=ids,
        features=np.zeros((len(ids), 3), dtype=np.float32),
        proposed_by={int(t): ("embedding",) for t in ids},
        reasons={5: "because you watched Title 2"},
        rows={
            "top_in_country": [Candidate(t, "top_in_country", float(50 - t)) for t in range(21, 31)],
            "trending": [Candidate(t, "trending_now", 1.0) for t in range(11, 21)],
            "new_releases": [Candidate(t, "new_releases", 1.0) for t in range(1, 11)],
            "because_you_watched:2": [Candidate(t, "because_you_watched", 0.5, "because you watched Title 2")
                                      for t in (3, 4, 5, 6, 1)],
        },
        degraded=[],
        failed_closed=[],
        timings_ms={"sources": 1.5, "features": 0.5},
    )
    return Retrieved(**{**base, **kw})


class Stages:
    """Fake member reader and candidate/scoring stages (the placement contract); each can be
    told to fail."""

    def __init__(self, member=None, found=None, scores=None):
        self.snapshot = snapshot() if member is None else member
        self.found = retrieved() if found is None else found
        self.fixed_scores = scores  # None: one descending score per candidate
        self.member_error: BaseException | None = None
        self.member_delay_s = 0.0
        self.retrieve_error: BaseException | None = None
        self.rank_error: BaseException | None = None
        self.ranked: list[tuple[str, int]] = []

    async def member(self, member_id: int):
        if self.member_delay_s:
            await asyncio.sleep(self.member_delay_s)
        if self.member_error is not None:
            raise self.member_error
        return self.snapshot

    async def candidates(self, ctx):
        if self.retrieve_error is not None:
            raise self.retrieve_error
        return self.found

    async def scores(self, retrieved: Retrieved) -> np.ndarray:
        version, features = retrieved.model_version, retrieved.features
        self.ranked.append((version, len(features)))
        if self.rank_error is not None:
            raise self.rank_error
        if self.fixed_scores is not None:
            return self.fixed_scores
        return np.linspace(1.0, 0.1, len(features))

    async def model_status(self) -> dict:
        return {"version": VERSION}


def build(stages: Stages, config: HomepageConfig | None = None, **kw) -> Homepage:
    config = config or HomepageConfig(artwork=ArtworkConfig(epsilon=0.2, seed=3))
    return build_homepage(config, CATALOG, stages, stages.member, **kw)


def page_of(stages: Stages, request: HomepageRequest | None = None, **kw) -> dict:
    request = request or HomepageRequest(1, request_id="req-1", titles_per_row=5)
    return asyncio.run(build(stages, **kw)(request))


def items(page: dict) -> list[dict]:
    return [item for row in page["rows"] for item in row["items"]]


def row_ids(page: dict) -> list[str]:
    return [row["row_id"] for row in page["rows"]]


def assert_well_formed(page: dict) -> None:
    assert page["rows"], "a page always has rows"
    for row in page["rows"]:
        assert row["row_id"] and row["title"] and row["items"]
        for position, item in enumerate(row["items"]):
            assert item["position"] == position
            assert item["name"] == CATALOG.titles[item["title_id"]].name
            assert item["explanation"]["sources"], item
            assert item["explanation"]["reasons"], item
            arms = CATALOG.artwork[item["title_id"]]
            assert item["artwork"]["artwork_id"] in arms
            assert 0.0 < item["artwork"]["propensity"] <= 1.0
    shown = [item["title_id"] for item in items(page)]
    assert len(shown) == len(set(shown)), "no title twice on the page"


# -- the personalized page -------------------------------------------------------------------------


def test_personalized_page_shape():
    stages = Stages()
    page = page_of(stages)
    assert_well_formed(page)
    assert page["request_id"] == "req-1" and page["member_id"] == 1
    assert (page["country"], page["device"], page["maturity"]) == ("US", "tv", "mature")
    assert page["fallback"] is False and page["cold_start"] is False
    assert page["degraded"] == []
    assert page["model_versions"] == {"retrieval": VERSION, "ranker": VERSION, "artwork": "linucb@0"}
    assert stages.ranked == [(VERSION, 30)]  # the ranker scored the retrieval version's features
    assert row_ids(page)[0] == "continue_watching"
    assert "because_you_watched:2" in row_ids(page)
    assert {"total", "member", "candidates", "rank", "rows", "candidates.sources"} <= set(page["timings_ms"])


def test_page_json_ready_and_limits_respected():
    import json

    page = page_of(Stages(), HomepageRequest(1, rows=3, titles_per_row=4, request_id="r"))
    json.dumps(page)
    assert 1 <= len(page["rows"]) <= 3
    assert all(len(row["items"]) <= 4 for row in page["rows"])


def test_watched_titles_are_removed_and_counted():
    page = page_of(Stages())
    shown = {item["title_id"] for item in items(page)}
    assert 2 not in shown  # watched, not in continue watching
    assert 7 in shown  # watched but part-way through: stays, in Continue Watching
    assert page["removed"]["counts"]["watched"] >= 1
    assert page["removed"]["total"] >= page["removed"]["counts"]["watched"]


def test_same_request_id_gives_the_same_page():
    a, b = page_of(Stages()), page_of(Stages())
    strip = lambda page: {k: v for k, v in page.items() if k != "timings_ms"}  # noqa: E731
    assert strip(a) == strip(b)


def test_request_overrides_country_and_maturity():
    page = page_of(Stages(), HomepageRequest(2, country="US", maturity="kids", request_id="r"))
    assert page["country"] == "US" and page["maturity"] == "kids"
    # every catalog title is rated family (1): a kids profile sees none of them, and the page says why
    assert page["removed"]["counts"]["maturity"] > 0
    assert items(page) == []


# -- member state failures -------------------------------------------------------------------------


def test_member_reader_raising_gives_a_page_without_history_marked_degraded():
    stages = Stages()
    stages.member_error = ConnectionError("actor gone")
    page = page_of(stages)
    assert "member_state" in page["degraded"]
    assert page["cold_start"] is None  # unknown: an outage is not a new member
    assert page["fallback"] is False  # candidates still ran
    assert_well_formed(page)
    assert "continue_watching" not in row_ids(page)


def test_member_reader_timing_out_gives_a_page_without_history_marked_degraded():
    stages = Stages()
    stages.member_delay_s = 5.0  # far beyond member_timeout_s; wait_for cancels it
    page = page_of(stages, member_timeout_s=0.05)
    assert "member_state" in page["degraded"]
    assert page["cold_start"] is None
    assert_well_formed(page)


def test_unknown_member_gets_a_cold_start_page_without_degradation():
    page = page_of(Stages(member=MemberSnapshot.empty(99)), HomepageRequest(99, request_id="r"))
    assert page["cold_start"] is True and page["degraded"] == []
    assert page["country"] == CATALOG.default_country
    assert_well_formed(page)


# -- candidate and ranker failures: the popular page -----------------------------------------------


def assert_fallback(page: dict) -> None:
    assert page["fallback"] is True
    assert "personalization" in page["degraded"]
    assert_well_formed(page)
    assert "top_in_country" in row_ids(page)


def test_retrieve_raising_serves_popular_rows():
    stages = Stages()
    stages.retrieve_error = RuntimeError("no model loaded")
    page = page_of(stages)
    assert_fallback(page)
    assert "candidates" in page["degraded"]
    assert page["model_versions"] == {"artwork": "linucb@0"}  # the popular rows still get artwork
    assert stages.ranked == []
    assert row_ids(page)[0] == "continue_watching"  # member state still shapes the popular page


def test_retrieve_timing_out_serves_popular_rows():
    stages = Stages()

    async def slow(ctx):
        await asyncio.sleep(5.0)

    stages.candidates = slow
    page = page_of(stages, retrieval_timeout_s=0.05)
    assert_fallback(page)
    assert "candidates" in page["degraded"]


def test_rank_raising_serves_popular_rows():
    stages = Stages()
    stages.rank_error = RuntimeError("booster broke")
    page = page_of(stages)
    assert_fallback(page)
    assert "ranker" in page["degraded"]
    assert page["model_versions"] == {"retrieval": VERSION, "artwork": "linucb@0"}


def test_ranker_returning_the_wrong_number_of_scores_falls_back():
    page = page_of(Stages(scores=np.ones(3)))
    assert_fallback(page)
    assert "ranker" in page["degraded"]


def test_failed_closed_source_serves_popular_rows_without_ranking():
    stages = Stages(found=retrieved(degraded=["sequence"], failed_closed=["sequence"]))
    page = page_of(stages)
    assert_fallback(page)
    assert "sequence" in page["degraded"]
    assert stages.ranked == []


def test_no_candidates_at_all_serves_popular_rows():
    stages = Stages(found=retrieved(title_ids=np.zeros(0, dtype=np.int64), features=np.zeros((0, 3)),
                                    proposed_by={}, rows={}))
    page = page_of(stages)
    assert_fallback(page)
    assert stages.ranked == []


def test_degraded_sources_of_retrieval_pass_through():
    page = page_of(Stages(found=retrieved(degraded=["embedding", "trending_now"])))
    assert page["fallback"] is False
    assert {"embedding", "trending_now"} <= set(page["degraded"])
    assert "personalization" not in page["degraded"]
    assert_well_formed(page)


# -- onboarding tastes -----------------------------------------------------------------------------


def new_member(genres: list[str]) -> MemberSnapshot:
    return MemberSnapshot(5, [], [], {}, [], known=True, preferred_genres=genres)


@pytest.mark.parametrize("broken", [False, True], ids=["personalized", "fallback"])
def test_preferred_genres_of_a_member_without_history_shape_the_genre_rows(broken):
    stages = Stages(member=new_member(["Comedy"]))  # 3 titles a row: the 30 titles fill more rows
    if broken:
        stages.retrieve_error = RuntimeError("down")
    page = page_of(stages, HomepageRequest(5, titles_per_row=3, request_id="r"))
    assert page["cold_start"] is True
    genre_rows = [r for r in page["rows"] if r["row_id"].startswith("genre:")]
    assert [r["row_id"] for r in genre_rows] == ["genre:comedy"]
    assert all(GENRE_OF[i["title_id"]] == "Comedy" for i in genre_rows[0]["items"])


def test_without_preferences_genre_rows_come_from_the_pool():
    page = page_of(Stages(member=new_member([])), HomepageRequest(5, titles_per_row=3, request_id="r"))
    genre_rows = [r["row_id"] for r in page["rows"] if r["row_id"].startswith("genre:")]
    assert len(genre_rows) > 1  # control for the test above: no tastes, several genres


def test_row_building_failing_still_serves_the_popular_rows():
    stages = Stages()
    homepage = build(stages)

    class Broken:
        def build_page(self, *args):
            raise TypeError("a bad editorial slot")

    homepage.rows = Broken()
    page = asyncio.run(homepage(HomepageRequest(member_id=1, request_id="r")))
    assert page["fallback"] is True and "rows" in page["degraded"] and page["rows"]


def test_each_page_hands_over_one_decision_record_that_matches_what_it_shows():
    """The server's record: every title with artwork, its arm and propensity as shown, the policy
    and version, and the context the policy saw (the learner rebuilds x from it)."""
    from marquee.schema import parse_decision

    records: list[dict] = []
    page = page_of(Stages(), HomepageRequest(member_id=1, request_id="page-1"), record=records.append)
    assert len(records) == 1
    decision = parse_decision(records[0])
    assert decision.request_id == "page-1" and decision.member_id == 1 and decision.policy == "linucb"
    shown = {(i["title_id"], r["row_id"], i["position"]): i["artwork"] for r in page["rows"] for i in r["items"]}
    assert len(decision.items) == len(shown)
    for item in decision.items:
        art = shown[(item.title_id, item.row_id, item.position)]
        assert art["artwork_id"] == item.artwork_id and art["propensity"] == pytest.approx(item.propensity)
    assert len(decision.context["member"]) > 0 and decision.context["device"] == "tv"


# -- scorers and interleaving (Part 7) ---------------------------------------------------------------


def personalized_row(page: dict) -> list[int]:
    """The titles of the page's first genre row (the default plan's rows the model ranks)."""
    row = next(r for r in page["rows"] if r["row_id"].startswith("genre:"))
    return [item["title_id"] for item in row["items"]]


def test_the_popularity_scorer_orders_by_plays_without_asking_the_ranker():
    stages = Stages()
    page = page_of(stages, config=HomepageConfig(scorer="popularity"))
    assert stages.ranked == []  # no model call
    assert page["model_versions"]["ranker"] == "popularity"
    row = personalized_row(page)
    plays = [CATALOG.plays_all[t] for t in row]
    assert plays == sorted(plays, reverse=True) and len(row) >= 3


def test_an_interleaved_page_drafts_its_model_row_from_both_rankers_and_records_the_teams():
    from marquee.schema import parse_decision

    records: list[dict] = []
    config = HomepageConfig.from_dict({"interleaving": {"rankers": ["popularity", "ranker"]},
                                       "artwork": {"epsilon": 0.2, "seed": 3}})
    # the ranker's scores run against popularity here: their rows differ
    stages = Stages(scores=np.linspace(0.1, 1.0, 30))
    ranker_row = personalized_row(page_of(Stages(scores=np.linspace(0.1, 1.0, 30))))
    popular_row = personalized_row(page_of(Stages(), config=HomepageConfig(scorer="popularity")))
    assert ranker_row != popular_row
    homepage = build(stages, config, record=records.append, interleaving_experiment="rankers")
    page = asyncio.run(homepage(HomepageRequest(1, request_id="req-1", titles_per_row=5), {"rankers": "tdi"}))
    assert_well_formed(page)
    decision = parse_decision(records[0])
    assert page["experiments"] == {"rankers": "tdi"} == decision.experiments
    payload = __import__("json").loads(records[0]["payload"])
    teams = payload["interleaving"]["teams"]
    assert payload["interleaving"]["experiment"] == "rankers"
    assert payload["interleaving"]["rankers"] == {"A": "popularity", "B": "ranker"}
    mixed = personalized_row(page)
    assert {str(t) for t in mixed} <= set(teams)  # the record names the team of every interleaved title
    for team, ranking in (("A", popular_row), ("B", ranker_row)):
        drafted = [t for t in mixed if teams[str(t)] == team]
        assert drafted, f"team {team} drafted nothing"
        # each team's titles come in its own ranker's order
        order = [t for t in ranking if t in drafted]
        assert [t for t in drafted if t in ranking] == order
    assert abs(sum(v == "A" for v in teams.values()) - sum(v == "B" for v in teams.values())) <= 1
    again = asyncio.run(homepage(HomepageRequest(1, request_id="req-1", titles_per_row=5), {"rankers": "tdi"}))
    assert personalized_row(again) == mixed  # seeded by the request: the page and its record agree


def test_a_decision_record_carries_latency_and_what_the_page_lost():
    records: list[dict] = []
    stages = Stages()
    stages.rank_error = RuntimeError("ranker down")
    page_of(stages, record=records.append)
    payload = __import__("json").loads(records[0]["payload"])
    assert payload["latency_ms"] >= 0 and "ranker" in payload["degraded"]


def test_the_popular_rows_scorer_serves_the_precomputed_rows_without_any_model_and_nothing_degraded():
    stages = Stages()
    stages.retrieve_error = AssertionError("the candidate stage must not be asked")
    page = page_of(stages, config=HomepageConfig(scorer="popular_rows"))
    assert stages.ranked == [] and page["degraded"] == [] and page["fallback"] is False
    assert page["model_versions"]["ranker"] == "popular_rows"
    assert_well_formed(page)


def test_only_scorers_of_the_same_candidates_interleave():
    from deployments.page_builder import check

    with pytest.raises(ValueError, match="interleaving.rankers: 'popular_rows' cannot be interleaved"):
        check(HomepageConfig.from_dict({"interleaving": {"rankers": ["popular_rows", "ranker"]}}))
