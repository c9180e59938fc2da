"""Marquee: a Netflix-style personalization system on Ray (shared kernel)."""

import os

__version__ = "0.1.0"

# Ray Data's Parquet reader (Ray 2.60) resizes Arrow's process-wide CPU pool to 32 threads when a
# read is declared. pyarrow's Acero fixes its thread capacity at first use, so a later threaded
# group_by in the same process fails ("thread index 19 is out of range [0, 19)"; CI hit it), and
# on 2 cores 32 threads only oversubscribe. 0 leaves Arrow's pool as Arrow sized it. Set before
# ray.data is imported (it reads the variable at import); processes Ray starts inherit it.
os.environ.setdefault("RAY_DATA_PARQUET_READER_CPU_COUNT", "0")
