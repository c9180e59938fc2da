"""What every stateful actor here shares: a @ray.remote class built on first use (importing an
actor module never imports Ray), and a named, restart-forever actor bound to one directory that
another process can find again, refusing to be bound to a second directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def lazy_remote(build: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap `build` (which imports ray and returns a remote class) so it runs once, on first use."""
    cache: list = []

    def remote_class():
        if not cache:
            cache.append(build())
        return cache[0]

    return remote_class


def start_bound_actor(remote_class, root: Path | str, *args, name: str, namespace: str,
                      lifetime: str | None, error: type[Exception] = ValueError,
                      **options) -> Any:
    """Get or create the named actor serving `root` (it restarts forever and rebuilds from that
    directory); raise `error` if an actor of that name already serves another directory. The
    actor class must have a `root()` method and take `root` as its first argument."""
    import ray

    root = str(Path(root).resolve())
    handle = remote_class.options(
        name=name, namespace=namespace, get_if_exists=True, lifetime=lifetime,
        max_restarts=-1, **options,
    ).remote(root, *args)
    existing = ray.get(handle.root.remote())
    if existing != root:
        raise error(f"actor {namespace}/{name} already serves {existing}, not {root}")
    return handle
