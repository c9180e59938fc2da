"""The one get-or-create helper for named actors, and a @ray.remote class built on first use
(importing an actor module never imports Ray). Every stateful actor here is named, restarts
forever, and is bound to one directory: another process finds it again by name, and it refuses to
be bound to a second directory. It lives on the head node: its directory is the head's disk, and a
worker node leaving the cluster (scale-down, preemption) must not take the memory of record with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from marquee.names import NAMESPACE

# Ray's own marker resource of the head node (Serve's controller pins itself the same way); asking
# a sliver of it places an actor on the head, and restarts it there.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def lazy_remote(build: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap `build` (which imports ray and returns a remote class) so it runs once, on first use."""
    cache: list = []

    def remote_class():
        if not cache:
            cache.append(build())
        return cache[0]

    return remote_class


def start_bound_actor(remote_class, root: Path | str, *args, name: str, namespace: str = NAMESPACE,
                      lifetime: str | None = None, error: type[Exception] = ValueError,
                      **options) -> Any:
    """Get or create the named actor serving `root` (it restarts forever and rebuilds from that
    directory); raise `error` if an actor of that name already serves another directory. The
    actor class must have a `root()` method and take `root` as its first argument; `args` and
    `options` (Ray actor options) apply only when it is created; it is placed on the head node."""
    import ray

    root = str(Path(root).resolve())
    resources = {HEAD_NODE_RESOURCE: 0.001, **options.pop("resources", {})}
    handle = remote_class.options(
        name=name, namespace=namespace, get_if_exists=True, lifetime=lifetime,
        max_restarts=-1, resources=resources, **options,
    ).remote(root, *args)
    existing = ray.get(handle.root.remote())
    if existing != root:
        raise error(f"actor {namespace}/{name} already serves {existing}, not {root}")
    return handle
