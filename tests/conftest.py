"""Shared test set-up: a persistent XLA compilation cache and offline hubs.

The cache matters on a 2-core machine: most of a small test's time is XLA
compiling, and a rerun (or a subprocess compiling the same function) reuses it.
"""

from __future__ import annotations

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Outside the checkout, so fresh clones on the same machine (CI) share it.
CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.expanduser("~"), ".cache", "ffr_jax", "xla-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# Verification caches of test images go to a throwaway folder, not ~/.cache.
os.environ.setdefault("FFR_JAX_CACHE", os.path.join(
    "/tmp", f"ffr_jax-test-cache-{os.getuid()}"))
# No model hub or dataset download may ever be reached from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# Subprocesses started by tests import the package from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
