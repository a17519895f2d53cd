"""One prepared GPU session: train step, Stable Diffusion sampling, input pipeline.

Made for a single short session on one accelerator (an H200: 15 minutes of
device time including start-up), so the whole suite stays under 8 minutes:
each section runs in its own subprocess under its own time limit, writes its
rows as it goes (a section cut off by its limit keeps what it finished), and
the suite writes one JSON record with the device, versions and flags.

Sections:

* ``train``: ResNet50 train step, bfloat16, 224 px, batch 128 and 256: ours
  (``benchmarks/train_step.py``'s jitted step) vs torchvision eager and
  ``torch.compile`` (channels-last, bf16 autocast), all in one process.
* ``sd``: Stable Diffusion v1.4's full-size architecture with random weights
  (``benchmarks/generate.py``: UNet, VAE, CLIP text encoder built from configs
  in code, nothing downloaded), 512 px, 50 PNDM steps, guidance 7.5: our
  sharded sampler in bfloat16 vs diffusers' PyTorch pipeline in float16 with
  SDPA attention.
* ``input``: ``benchmarks/input_pipeline.py`` (JPEG decode, workers and the
  image cache) when that script exists; skipped otherwise.

  python benchmarks/gpu_suite.py                 # the GPU session (< 8 min)
  python benchmarks/gpu_suite.py --tiny          # toy shapes on CPU (smoke test)

Appends to ``benchmarks/results/gpu_suite.json``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "gpu_suite.json")
SECTIONS = ("train", "sd", "input")
# Seconds per section: together under 8 minutes with process start-up.
TIME_LIMITS = {"train": 210, "sd": 210, "input": 45}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "diffusers",
            "transformers")
# Flags of benchmarks/input_pipeline.py that select the on-disk image cache,
# whichever spelling that script adopts; none present -> its default rows.
INPUT_CACHE_FLAGS = ("--image_cache", "--image-cache", "--from_cache", "--from-cache")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tiny", action="store_true",
                 help="toy shapes and models, runs on CPU in about a minute (smoke test)")
  p.add_argument("--sections", default=",".join(SECTIONS),
                 help=f"comma-separated subset of {','.join(SECTIONS)}")
  p.add_argument("--out", default=RESULTS, help="JSON file the record is appended to")
  p.add_argument("--label", default="")
  # Internal: run one section in this process, rows to --section-out.
  p.add_argument("--section", default="", help=argparse.SUPPRESS)
  p.add_argument("--section-out", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
  if unknown:
    p.error(f"unknown sections {unknown}; expected a subset of {list(SECTIONS)}")
  return args


def _write(path: str, rows: list[dict[str, Any]]) -> None:
  """Rows so far, rewritten after each: a section cut off keeps its rows."""
  with open(path, "w") as f:
    json.dump(rows, f, indent=1)


def section_train(tiny: bool, out: str) -> None:
  """ResNet50 bf16 train step, ours vs torch eager and torch.compile."""
  sys.path.insert(0, HERE)
  import train_step  # pylint: disable=import-outside-toplevel

  if tiny:  # torch.compile is skipped: on CPU it needs a C++ toolchain and minutes
    model, size, batches, steps, warmup, modes = "resnet18", 32, (2,), 1, 0, ("",)
  else:
    model, size, batches, steps, warmup, modes = (
        "resnet50", 224, (128, 256), 20, 3, ("", "default"))
  rows: list[dict[str, Any]] = []
  for batch in batches:
    jax_row = train_step.bench_jax(model, batch, size, "bfloat16", True, steps, warmup)
    rows.append({"impl": "ffr_jax", "model": model, "batch": batch, "image_size": size,
                 "dtype": "bfloat16", **jax_row})
    _write(out, rows)
    for mode in modes:
      torch_row = train_step.bench_torch(model, batch, size, "bfloat16", steps, warmup,
                                         compile_mode=mode)
      if torch_row is not None:
        rows.append({"impl": f"torch {'compile' if mode else 'eager'}", "model": model,
                     "batch": batch, "image_size": size, "dtype": "bfloat16 autocast",
                     **torch_row})
        _write(out, rows)


def section_sd(tiny: bool, out: str) -> None:
  """Our sharded SD sampler vs diffusers' pipeline (benchmarks/generate.py)."""
  sys.path.insert(0, HERE)
  import generate  # pylint: disable=import-outside-toplevel

  if tiny:
    argv = ["--tiny", "--resolution", "16", "--steps", "2", "--batch-size", "1"]
  else:
    argv = ["--resolution", "512", "--steps", "50", "--batch-size", "8"]
  argv += ["--calls", "1", "--dtype", "bfloat16", "--torch-dtype",
           "bfloat16" if tiny else "float16", "--guidance-scale", "7.5",
           "--scheduler", "pndm", "--out", out + ".generate.json"]
  record = generate.main(argv)
  _write(out, [{**row, "settings": record["settings"]} for row in record["results"]])


def section_input(tiny: bool, out: str) -> None:
  """benchmarks/input_pipeline.py, if present, at a small size."""
  script = os.path.join(HERE, "input_pipeline.py")
  if not os.path.isfile(script):
    _write(out, [{"skipped": "benchmarks/input_pipeline.py does not exist"}])
    return
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
  help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True,
                             text=True, env=env, timeout=60).stdout
  cache_flags = [f for f in INPUT_CACHE_FLAGS if f in help_text.split()]
  json_out = out + ".input.json"
  if tiny:
    argv = ["--num_images", "16", "--batch_size", "8", "--sizes", "32", "--workers", "1",
            "--threads", "1"]
  else:
    argv = ["--num_images", "2048", "--batch_size", "256", "--sizes", "224", "--workers",
            "8", "--threads", "8"]
  cmd = [sys.executable, script, *argv, *cache_flags[:1], "--out", json_out]
  result = subprocess.run(cmd, capture_output=True, text=True, env=env)
  row: dict[str, Any] = {"command": cmd[1:], "returncode": result.returncode}
  if result.returncode != 0:
    print(result.stderr[-3000:], file=sys.stderr)
  if result.returncode == 0 and os.path.isfile(json_out):
    with open(json_out) as f:
      row["result"] = json.load(f)
  else:
    row["stderr_tail"] = result.stderr[-2000:]
  _write(out, [row])
  if result.returncode != 0:
    raise SystemExit(f"benchmarks/input_pipeline.py failed (exit {result.returncode})")


SECTION_FNS = {"train": section_train, "sd": section_sd, "input": section_input}


def _versions() -> dict[str, str]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def _device() -> dict[str, Any]:
  info: dict[str, Any] = {"host": platform.node(), "cpu_count": os.cpu_count()}
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30)
    info["nvidia_smi"] = smi.stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    info["nvidia_smi"] = ""
  return info


def run_section(name: str, tiny: bool, limit_s: float) -> dict[str, Any]:
  """Runs one section in a subprocess under ``limit_s``; its rows and status."""
  with tempfile.TemporaryDirectory(prefix=f"gpu_suite_{name}_") as tmp:
    out = os.path.join(tmp, "rows.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--section", name,
           "--section-out", out] + (["--tiny"] if tiny else [])
    # JAX and torch share the device in one process: no JAX preallocation.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
               p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit_s)
      status, tail = ("ok" if proc.returncode == 0 else f"exit {proc.returncode}",
                      proc.stdout[-3000:] + proc.stderr[-3000:])
    except subprocess.TimeoutExpired as e:
      status = f"cut off at {limit_s:.0f} s"
      tail = ((e.stdout or b"")[-3000:].decode(errors="replace")
              + (e.stderr or b"")[-3000:].decode(errors="replace"))
    rows = []
    if os.path.isfile(out):
      with open(out) as f:
        rows = json.load(f)
  return {"status": status, "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
          **({"log_tail": tail} if status != "ok" else {})}


def _append(path: str, record: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  runs = []
  if os.path.isfile(path):
    with open(path) as f:
      runs = json.load(f).get("runs", [])
  with open(path, "w") as f:
    json.dump({"runs": runs + [record]}, f, indent=1)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
  args = parse_args(argv)
  if args.section:
    SECTION_FNS[args.section](args.tiny, args.section_out)
    return None
  record: dict[str, Any] = {
      "label": args.label, "tiny": args.tiny,
      "time": datetime.datetime.now().isoformat(timespec="seconds"),
      "device": _device(), "versions": _versions(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "sections": {}}
  for name in args.sections.split(","):
    limit = TIME_LIMITS[name] * (3 if args.tiny else 1)  # slow shared CPUs
    result = run_section(name, args.tiny, limit)
    record["sections"][name] = result
    print(f"{name}: {result['status']} in {result['seconds']} s, {len(result['rows'])} rows")
    for row in result["rows"]:
      print("  " + json.dumps({k: v for k, v in row.items()
                               if k in ("impl", "batch", "images_per_s", "skipped",
                                        "returncode", "compile_s", "first_call_s")}))
  _append(args.out, record)
  print(f"appended to {args.out}")
  return record


if __name__ == "__main__":
  main()
