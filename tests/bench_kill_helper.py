"""Run a benchmark spec into a store from the command line (the kill -9 tests start this in a
subprocess and kill it mid-way): ``python tests/bench_kill_helper.py SPEC STORE [WORKERS]``."""

from __future__ import annotations

import sys

from prunekit.bench import run_spec

if __name__ == "__main__":
    spec_path, store_path = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    summary = run_spec(spec_path, store_path, progress=False, workers=workers)
    print(summary)
