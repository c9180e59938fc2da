"""The one follow-a-hot-value thread: it keeps polling after a refresh raises, and stops."""

import threading

from deployments.follower import Follower


def test_a_refresh_that_raises_is_retried_and_stop_ends_the_thread():
    calls, third = [], threading.Event()

    def refresh():
        calls.append(1)
        if len(calls) >= 3:
            third.set()
        raise RuntimeError("half-written file")

    follower = Follower(refresh, poll_s=0.01, name="test-watch")
    follower.start()
    follower.start()  # a second start is a no-op: one thread
    assert third.wait(5), calls
    follower.stop()
    follower._thread.join(5)
    assert not follower._thread.is_alive()
    assert sum(t.name == "test-watch" for t in threading.enumerate()) == 0
