"""Names and constants every layer shares, each defined once: the Ray namespace and the named
actors' names (one process creates an actor, another finds it by these), the Serve app's name,
time units, and the shape of a model version."""

from __future__ import annotations

import re

NAMESPACE = "marquee"  # the Ray namespace of every named actor and of the Serve app's drivers
APP_NAME = "marquee"  # the Serve application
EVENT_LOG_ACTOR = "marquee-event-log"
MEMBER_STATE_ACTOR = "marquee-member-state"
# Titles per member that member state keeps for the homepage: its history for scoring and the
# watched filter (the heaviest MovieLens members rated ~700 titles). The actor and every
# replica-local view of member state keep the same number.
MEMBER_RECENT_LIMIT = 1000
BANDIT_LEARNER_ACTOR = "marquee-bandit-learner"  # follows the log, learns the artwork policy

DAY_S = 86_400
DAY_MS = DAY_S * 1000
MS = 1000  # milliseconds per second

# A registered model version: "v" and a zero-padded sequence number ("v0001").
MODEL_VERSION_RE = re.compile(r"^v(\d{4,})$")
