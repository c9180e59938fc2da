"""SASRec (Kang & McAuley 2018) from rectools, as a peer with the same fit/score interface as
models/peers.py: the sequential model that tests whether the pipeline's edge is only "what the
member watched last". Optional: `pip install -e '.[peers]'` (rectools with the CPU build of torch).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from models.protocol import TrainData

EXTRA = "peers"
MISSING = (f"SASRec skipped: rectools is not installed (install the optional extra: "
           f"pip install -e '.[{EXTRA}]')")


def available() -> bool:
    """rectools and torch importable (the `peers` extra is installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("rectools", "torch", "pytorch_lightning"))


class SASRec:
    """rectools' SASRecModel on each member's training rows in time order; scores every title
    (titles rectools never saw in training score below every seen one)."""

    def __init__(self, n_factors: int = 64, n_blocks: int = 2, n_heads: int = 4, session_max_len: int = 50,
                 epochs: int = 30, lr: float = 0.001, dropout_rate: float = 0.2, batch_size: int = 128,
                 random_state: int = 7):
        self.n_factors, self.n_blocks, self.n_heads = n_factors, n_blocks, n_heads
        self.session_max_len, self.epochs, self.lr = session_max_len, epochs, lr
        self.dropout_rate, self.batch_size, self.random_state = dropout_rate, batch_size, random_state

    def fit(self, data: TrainData) -> "SASRec":
        import pandas as pd
        import pytorch_lightning
        from rectools import Columns
        from rectools.dataset import Dataset
        from rectools.models import SASRecModel
        from rectools.models.nn.item_net import IdEmbeddingsItemNet

        pytorch_lightning.seed_everything(self.random_state, workers=True, verbose=False)
        frame = pd.DataFrame({
            Columns.User: data.members, Columns.Item: data.titles, Columns.Weight: 1.0,
            # rows are in time order per member; rectools sorts by datetime, ties kept stable
            Columns.Datetime: pd.to_datetime(data.timestamps, unit="s"),
        })
        self.dataset_ = Dataset.construct(frame)
        self.model_ = SASRecModel(
            n_blocks=self.n_blocks, n_heads=self.n_heads, n_factors=self.n_factors,
            dropout_rate=self.dropout_rate, session_max_len=self.session_max_len, lr=self.lr,
            batch_size=self.batch_size, epochs=self.epochs, deterministic=True, verbose=0,
            item_net_block_types=(IdEmbeddingsItemNet,), recommend_torch_device="cpu")
        self.model_.fit(self.dataset_)
        self.n_titles_ = data.shape[1]
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        from rectools import Columns

        members = np.asarray(members, dtype=np.int64)
        known = self.dataset_.item_id_map.external_ids
        out = np.full((len(members), self.n_titles_), -1e9)
        recos = self.model_.recommend(users=members, dataset=self.dataset_, k=len(known),
                                      filter_viewed=False, on_unsupported_targets="warn")
        position = {int(m): i for i, m in enumerate(members)}
        rows = np.fromiter((position[int(u)] for u in recos[Columns.User]), dtype=np.int64, count=len(recos))
        out[rows, recos[Columns.Item].to_numpy(dtype=np.int64)] = recos[Columns.Score].to_numpy(dtype=np.float64)
        return out
