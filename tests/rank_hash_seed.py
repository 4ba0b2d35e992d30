"""Run a Python script with a hash seed of its MPI rank's own: `rank_hash_seed.py SEEDS script
args...` re-executes Python with PYTHONHASHSEED = the rank's entry of the comma-separated SEEDS
(rank 0 the first). Ranks whose sets of strings iterate in different orders expose code that
issues Legate operations in a set's order (the ranks then diverge)."""

import os
import sys

if __name__ == "__main__":
    seeds = sys.argv[1].split(",")
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))
    env = dict(os.environ, PYTHONHASHSEED=seeds[rank % len(seeds)])
    os.execve(sys.executable, [sys.executable] + sys.argv[2:], env)
