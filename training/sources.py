"""The Marquee dataset directory behind a dataset spec: what the feature job reads.

`world:DIR` is one already; `movielens:PATH` is imported once into the home (Paths.movielens) and
reused. Shared by `marquee eval --features` and `marquee retrain`, which both build a feature
store from a split's training events (training.point_in_time.build_training_store).
"""

from __future__ import annotations

from pathlib import Path

from marquee.dataset import load_dataset
from marquee.dataset_spec import DatasetSpec
from marquee.home import Paths
from producers.movielens.importer import import_movielens


def marquee_dataset_dir(spec: str, paths: Paths, *, drop_unknown_items: bool = False) -> Path:
    """The dataset directory of `spec`, importing raw MovieLens into `paths` the first time
    (`drop_unknown_items`: drop ratings of items missing from the item file, as the loader does)."""
    parsed = DatasetSpec.parse(spec, allow_bare_world=False)
    target = parsed.directory(paths)
    if parsed.kind == "world":
        return target
    try:
        load_dataset(target)
    except Exception:  # not imported yet (or a broken earlier import): import it afresh
        import_movielens(parsed.location, target, drop_unknown_items=drop_unknown_items)
    return target
