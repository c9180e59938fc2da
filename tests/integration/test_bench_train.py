"""`marquee bench train --data retrain` builds its rows exactly as a retrain does: the training
table, both objectives' specs and the description the JSON reports (no Ray needed for this part)."""

from __future__ import annotations

from bench.train import retrain_examples
from producers.world.generate import generate_world


def test_the_retrain_rows_are_built_through_the_retrains_own_code(tmp_path):
    generate_world(members=300, titles=150, days=20, seed=4, out=tmp_path / "w")
    table, specs, described = retrain_examples(f"world:{tmp_path / 'w'}", nthread=1)
    assert set(specs) == {"play", "completion"} and table.num_rows == described["rows"] > 0
    assert {"member", "title", "play", "completion"} <= set(table.column_names)
    assert described["features"] == len(specs["play"].features) > 10
