"""Run a benchmark spec into a store from the command line (the kill -9 test starts this in a
subprocess and kills it mid-way): ``python tests/bench_kill_helper.py SPEC STORE``."""

from __future__ import annotations

import sys

from prunekit.bench import run_spec

if __name__ == "__main__":
    spec_path, store_path = sys.argv[1], sys.argv[2]
    summary = run_spec(spec_path, store_path, progress=False)
    print(summary)
