"""The artwork environment (gymnasium's checker, determinism, the world's reward model) and the
context vector it observes through (bandits.context: layout, history features, validation)."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from bandits.context import (
    FEATURE_DIM,
    FEATURE_NAMES,
    MEMBER_DIM,
    N_GENRES,
    N_THEMES,
    member_vectors,
    page_features,
    theme_history,
)
from bandits.env import ArtworkEnv, ArtworkWorld
from producers.world.behaviour import DEFAULT_BEHAVIOUR
from producers.world.generate import WorldSettings

TINY = WorldSettings(members=150, titles=120, days=7, seed=3)


@pytest.fixture(scope="module")
def world() -> ArtworkWorld:
    return ArtworkWorld(TINY)


def test_env_passes_gymnasiums_checker(world):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec / render modes" notes, not failures
        check_env(ArtworkEnv(world=world), skip_render_check=True)


def _episodes(env: ArtworkEnv, seed: int, count: int, actions: list[int]):
    out = []
    obs, info = env.reset(seed=seed)
    for i in range(count):
        _, reward, terminated, truncated, step_info = env.step(actions[i % len(actions)])
        out.append((obs["features"].copy(), obs["mask"].copy(), info["click_probabilities"].copy(), reward,
                    terminated, truncated, step_info["regret"]))
        obs, info = env.reset()
    return out


def _same(a, b) -> bool:
    return all(all(np.array_equal(x, y) for x, y in zip(ea, eb)) for ea, eb in zip(a, b))


def test_identical_seeds_give_identical_episodes_and_others_differ(world):
    env = ArtworkEnv(world=world)
    first = _episodes(env, 21, 30, [0, 1, 2])
    again = _episodes(env, 21, 30, [0, 1, 2])  # after 30 episodes, reset(seed) starts over
    fresh = _episodes(ArtworkEnv(world=ArtworkWorld(TINY)), 21, 30, [0, 1, 2])
    other = _episodes(env, 22, 30, [0, 1, 2])
    assert _same(first, again) and _same(first, fresh)
    assert not _same(first, other)
    assert all(e[4] and not e[5] for e in first)  # one impression per episode


def test_observation_is_the_policys_view_padded_with_a_mask(world):
    env = ArtworkEnv(world=world)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    mask = obs["mask"].astype(bool)
    assert 3 <= mask.sum() <= env.world.max_arms  # the catalog gives titles 3-6 artworks
    assert np.all(obs["arm_class"][~mask] == -1) and np.all(obs["arm_class"][mask] >= 0)
    assert np.all(obs["features"][~mask] == 0.0)
    p = info["click_probabilities"]
    assert np.all(p[~mask] == 0.0) and np.all((p[mask] > 0) & (p[mask] < 1))


def test_step_reports_regret_and_a_padded_arm_never_plays(world):
    env = ArtworkEnv(world=world)
    obs, info = env.reset(seed=5)
    while obs["mask"].all():
        obs, info = env.reset()
    padded = int(np.flatnonzero(obs["mask"] == 0)[0])
    _, reward, _, _, step_info = env.step(padded)
    assert reward == 0.0 and step_info["valid_action"] is False
    assert step_info["regret"] == pytest.approx(info["click_probabilities"].max())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_rewards_follow_the_click_probabilities(world):
    """Episodes: plays drawn at the true probabilities average to them."""
    env = ArtworkEnv(world=world)
    probabilities, rewards = [], []
    _, info = env.reset(seed=9)
    for _ in range(3000):
        best = info["best_arm"]
        _, reward, _, _, _ = env.step(best)
        probabilities.append(info["click_probabilities"][best])
        rewards.append(reward)
        _, info = env.reset()
    se = np.sqrt(np.mean(probabilities) * (1 - np.mean(probabilities)) / len(rewards))
    assert abs(np.mean(rewards) - np.mean(probabilities)) < 4 * se


def test_the_arms_differ_only_by_the_worlds_theme_term(world):
    """With the world's play_theme the arms of a title differ; with it set to 0 they are equal:
    the artwork theme x hidden affinity is the one term a policy can act on."""
    shown = world.impressions(500, world.stream(np.random.default_rng(1)))
    flat = ArtworkWorld(TINY, replace(DEFAULT_BEHAVIOUR, play_theme=0.0))
    same = flat.impressions(500, flat.stream(np.random.default_rng(1)))  # its own past, too
    spread = lambda p, m: np.where(m, p, -np.inf).max(1) - np.where(m, p, np.inf).min(1)
    assert np.all(spread(same.probabilities, same.mask) < 1e-12)
    assert np.mean(spread(shown.probabilities, shown.mask)) > 0.01


def test_the_context_never_sees_the_hidden_theme_affinity(world):
    """Scrambling the members' hidden theme affinities changes the click probabilities and
    nothing the policy observes."""
    shown = world.impressions(300, world.stream(np.random.default_rng(2)))
    scrambled = ArtworkWorld(TINY)
    scrambled.members.theme_affinity = np.random.default_rng(0).permutation(scrambled.members.theme_affinity)
    seen = scrambled.impressions(300, scrambled.stream(np.random.default_rng(2)))
    np.testing.assert_array_equal(shown.features, seen.features)
    assert not np.allclose(shown.probabilities, seen.probabilities)


def test_history_comes_from_the_simulated_past(world):
    assert world.theme_impressions.sum() > 0 and world.theme_plays.sum() > 0
    assert np.all(world.theme_plays <= world.theme_impressions)  # a homepage play follows an impression
    assert world.genre_plays.sum() >= world.theme_plays.sum()


def test_context_layout_puts_member_history_in_the_arms_theme_columns():
    genre_plays = np.zeros(N_GENRES)
    genre_plays[[2, 5]] = [3, 1]
    impressions = np.full(N_THEMES, 10.0)
    plays = np.zeros(N_THEMES)
    plays[4] = 6.0  # every play under theme 4
    member = member_vectors(genre_plays, impressions, plays, device=1, hour=20)
    assert member.shape == (MEMBER_DIM,)
    features, mask = page_features(member, np.array([[4, 0, -1]]), np.eye(N_GENRES)[[7]])
    assert features.shape == (1, 3, FEATURE_DIM) and mask.tolist() == [[True, True, False]]
    row = dict(zip(FEATURE_NAMES, features[0, 0]))
    other = dict(zip(FEATURE_NAMES, features[0, 1]))
    assert row["bias"] == 1.0 and row["genre_share:Animation"] == 0.75 and row["device:mobile"] == 1.0
    assert row["hour:evening"] == 1.0 and row["hour:small_hours"] == 0.0
    assert row["title_genre:Drama"] == 1.0 and row["theme:dark"] == 1.0 and other["theme:action"] == 1.0
    assert row["theme_share:dark"] == 1.0 and row["share_x_theme:dark"] == 1.0 and row["own:share"] == 1.0
    assert other["share_x_theme:action"] == 0.0 and other["own:share"] == 0.0
    assert row["own:lift"] > 0 > other["own:lift"]  # dark played above the member's rate, action below
    assert np.all(features[0, 2] == 0.0)


def test_theme_history_without_history_is_neutral_and_lift_divides_exposure_out():
    share, lift = theme_history(np.zeros(N_THEMES), np.zeros(N_THEMES))
    assert np.all(share == 0) and np.allclose(lift, 0)
    # Same plays per impression under every theme, very different exposure: share follows
    # exposure, lift stays neutral.
    impressions = np.array([80, 10, 10, 0, 0, 0, 0, 0], float)
    share, lift = theme_history(impressions, impressions / 5)
    assert share[0] == pytest.approx(0.8) and np.allclose(lift[:3], 0, atol=0.05)


@pytest.mark.parametrize(("call", "field"), [
    (lambda: member_vectors(np.zeros(N_GENRES), np.zeros(N_THEMES), np.zeros(N_THEMES), 9, 3), "device"),
    (lambda: member_vectors(np.zeros(N_GENRES), np.zeros(N_THEMES), np.zeros(N_THEMES), 0, 24), "hour"),
    (lambda: page_features(np.zeros(3), np.zeros((1, 2), int), np.zeros((1, N_GENRES))), "member"),
    (lambda: page_features(np.zeros(MEMBER_DIM), np.zeros(2, int), np.zeros((1, N_GENRES))), "arm_themes"),
    (lambda: page_features(np.zeros(MEMBER_DIM), np.full((1, 2), N_THEMES), np.zeros((1, N_GENRES))), "arm_themes"),
    (lambda: page_features(np.zeros(MEMBER_DIM), np.zeros((1, 2), int), np.zeros((2, N_GENRES))), "title_genres"),
])
def test_bad_context_inputs_raise_naming_the_field(call, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        call()


def test_the_history_is_live_and_what_is_drawn_does_not_depend_on_it(world):
    """An impression and its play join the member's counts under the shown arm's theme (as the
    learner's published counts do in serving); the past itself is never changed, and the same
    stream draws the same members and titles whatever the history holds."""
    past_impressions = world.theme_impressions.copy()
    history = world.history()
    shown = world.impressions(200, world.stream(np.random.default_rng(5)), history)
    arm = np.zeros(200, dtype=np.int64)
    reward = (np.arange(200) % 3 == 0).astype(np.float64)
    history.observe(shown, arm, reward, world.title_genres)

    theme = shown.arm_class[:, 0]
    expected = world.theme_impressions.copy()
    np.add.at(expected, (shown.member, theme), 1.0)
    np.testing.assert_array_equal(history.theme_impressions, expected)
    plays = world.theme_plays.copy()
    np.add.at(plays, (shown.member[reward > 0], theme[reward > 0]), 1.0)
    np.testing.assert_array_equal(history.theme_plays, plays)
    assert history.genre_plays.sum() == world.genre_plays.sum() + world.title_genres[shown.title[reward > 0]].sum()
    np.testing.assert_array_equal(world.theme_impressions, past_impressions)  # the past is a copy

    again = world.impressions(200, world.stream(np.random.default_rng(5)), history)
    assert np.array_equal(again.member, shown.member) and np.array_equal(again.title, shown.title)
    assert not np.array_equal(again.features, shown.features)  # the context moved with the history


def test_the_env_counts_its_steps_and_reset_with_a_seed_starts_from_the_past(world):
    env = ArtworkEnv(world=world)
    env.reset(seed=4)
    for _ in range(40):
        env.step(0)
        env.reset()
    assert env._history.theme_impressions.sum() == world.theme_impressions.sum() + 40
    env.reset(seed=4)
    np.testing.assert_array_equal(env._history.theme_impressions, world.theme_impressions)
