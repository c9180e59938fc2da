"""Ray Data must not resize Arrow's CPU pool under pyarrow's Acero (marquee/__init__.py says why)."""

import subprocess
import sys


def test_ray_datas_parquet_reader_is_told_to_leave_arrows_cpu_pool_alone():
    # a fresh interpreter: Ray Data reads the variable when its Parquet reader is first imported,
    # and sizes Arrow's pool to it (pa.set_cpu_count) unless it is 0
    script = ("import marquee\n"
              "from ray.data._internal.datasource_v2.formats.parquet import parquet_file_reader as r\n"
              "print(r._READER_CPU_COUNT)\n")
    env_free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in __import__("os").environ.items()
                                   if k != "RAY_DATA_PARQUET_READER_CPU_COUNT"})
    assert env_free.returncode == 0, env_free.stderr
    assert env_free.stdout.split()[-1] == "0"
