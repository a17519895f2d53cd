"""A sweep process of fake runs under ``--shard=auto`` claims (tests/test_sweep.py).

    python claiming_sweep.py WORKDIR UNITS RUNS_PER_UNIT

Each fake run appends this process's pid to ``{run_dir}/done_by``, sleeps a
little, then writes results.json; the units' claims decide who runs what.
"""

import os
import sys
import time

from ffr_jax import experiments


def fake_run(run, should_stop=None, state=None):
  del should_stop, state
  os.makedirs(run.run_dir, exist_ok=True)
  with open(os.path.join(run.run_dir, "done_by"), "a") as f:
    f.write(f"{os.getpid()}\n")
  time.sleep(0.05)
  with open(os.path.join(run.run_dir, "results.json"), "w") as f:
    f.write("{}")


def main(workdir: str, units: int, per_unit: int) -> None:
  experiments.EXECUTORS.register("fake", experiments.Executor(fake_run, in_process=False))
  # Grid order interleaves the units, as a sweep's lr and method keys do.
  runs = [experiments.Run(name=f"u{u}/r{r}", config_path="", overrides=(), config=None,
                          run_dir=os.path.join(workdir, "runs", f"u{u}", f"r{r}"),
                          unit=f"unit{u}")
          for r in range(per_unit) for u in range(units)]
  outcomes = experiments.execute(runs, "fake", log=lambda s: None,
                                 claims=os.path.join(workdir, experiments.CLAIMS_DIR))
  print(" ".join(o.status for o in outcomes))


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
