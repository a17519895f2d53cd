"""Images/s of our jitted ResNet train step beside torchvision + torch.optim.Adam.

Both sides do the same work per step: forward in train mode (batch-norm batch
statistics), softmax cross-entropy, backward, Adam with L2 weight decay 1e-5
(torch.optim.Adam's ``weight_decay``; optax ``add_decayed_weights`` before
``adam``). Inputs are random arrays already on the device, so the input
pipeline is not measured. The JAX state is donated to the step.

  python benchmarks/train_step.py                      # b32@224 and b128@64
  python benchmarks/train_step.py --quick              # small shapes, 2 steps
  python benchmarks/train_step.py --conv1x1-as-matmul both --dtype bfloat16
  python benchmarks/train_step.py --xla-flags="--xla_cpu_use_thunk_runtime=false" \
      --label thunk-off

Every run appends one record (device, options, XLA flags, label, per-config
numbers) to ``benchmarks/results/train_step.json``, so each attempt stays on
file. Runs on whatever jax's default device is (CPU, GPU, TPU) unchanged; the
torch baseline uses CUDA when available, and is skipped when torch is missing.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import sys
import time
import types
from collections.abc import Callable
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train_step.json")
NUM_CLASSES = 10
LR = 1e-3
WEIGHT_DECAY = 1e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="32x224,128x64",
                 help="comma-separated BATCHxPIXELS shapes (default: 32x224,128x64)")
  p.add_argument("--quick", action="store_true",
                 help="small shapes (8x224,32x64) and 2 timed steps, for a smoke run")
  p.add_argument("--steps", type=int, default=3, help="timed steps per config")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  p.add_argument("--model", default="resnet50", help="ffr_jax model name (torch: resnet50/18)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--conv1x1-as-matmul", default="both", choices=("on", "off", "both"))
  p.add_argument("--small-convs-as-matmul", default="on", choices=("on", "off"),
                 help="3x3 convolutions with <= 2x2 outputs as patches matmuls")
  p.add_argument("--xla-flags", default="",
                 help="appended to XLA_FLAGS before jax is imported; recorded in the JSON; "
                 "give it as --xla-flags=\"--flag=value ...\"")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
  p.add_argument("--label", default="", help="name of this attempt in the JSON record")
  p.add_argument("--out", default=RESULTS, help="JSON file the record is appended to")
  p.add_argument("--probe", action="store_true",
                 help="also time the step's building blocks alone (at the first config)")
  p.add_argument("--profile", default="", metavar="LOGDIR",
                 help="also take an XLA trace of the step at the first config into LOGDIR "
                 "and print where its time goes (needs the xprof package)")
  p.add_argument("--breakdown", action="store_true",
                 help="also time the step's parts (forward, backward, Adam) in JAX and "
                 "torch, interleaved, at the first config")
  args = p.parse_args(argv)
  if args.quick:
    args.configs = "8x224,32x64" if args.configs == p.get_default("configs") else args.configs
    args.steps = min(args.steps, 2)
  return args


def parse_configs(spec: str) -> list[tuple[int, int]]:
  """``"32x224,128x64"`` -> ``[(32, 224), (128, 64)]``."""
  out = []
  for item in spec.split(","):
    batch, size = item.lower().split("x")
    out.append((int(batch), int(size)))
  return out


def _jax_step(model_name: str, batch: int, size: int, dtype: str, as_matmul: bool,
              small_as_matmul: bool = True) -> tuple[Any, Any, tuple[Any, Any], Any, float]:
  """Our compiled train step: (compiled, state, (x, y), lowered, compile seconds)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from ffr_jax.models import create_model

  model = create_model(model_name, NUM_CLASSES, dtype, conv1x1_as_matmul=as_matmul,
                       small_convs_as_matmul=small_as_matmul)
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.adam(LR))

  def loss_fn(params, batch_stats, x, y):
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                               train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, y).mean()
    return loss, updates["batch_stats"]

  def step(state, x, y):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, NUM_CLASSES, batch))
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
  t0 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0,)).lower(state, x, y)
  compiled = lowered.compile()
  return compiled, state, (x, y), lowered, time.perf_counter() - t0


def bench_jax(model_name: str, batch: int, size: int, dtype: str, as_matmul: bool,
              steps: int, warmup: int, small_as_matmul: bool = True) -> dict[str, Any]:
  """Compiles and times our train step; returns img/s, compile time and FLOP rate."""
  import jax

  compiled, state, (x, y), lowered, compile_s = _jax_step(
      model_name, batch, size, dtype, as_matmul, small_as_matmul)
  flops = _flops(lowered)
  for _ in range(warmup):
    state, loss = compiled(state, x, y)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, loss = compiled(state, x, y)
  jax.block_until_ready((state, loss))
  elapsed = time.perf_counter() - t0
  result = {"images_per_s": batch * steps / elapsed, "step_s": elapsed / steps,
            "compile_s": compile_s, "loss": float(loss)}
  if flops:
    result["gflop_per_step"] = flops / 1e9
    result["gflop_per_s"] = flops * steps / elapsed / 1e9
  del state, compiled
  gc.collect()
  return result


def probe_ops(batch: int, size: int, steps: int) -> list[dict[str, Any]]:
  """Forward+backward GFLOP/s (or GB/s) of the step's building blocks on their own.

  Shapes are those of ResNet50's first stage at this batch and resolution,
  where the activations are largest; this says which op bounds the step.
  """
  import jax
  import jax.numpy as jnp
  import flax.linen as nn

  from ffr_jax.models.resnet import Conv1x1Matmul

  h = size // 4  # after the stem's two stride-2 ops
  key = jax.random.key(0)

  def conv(k: int, cin: int, cout: int, stride: int = 1) -> nn.Module:
    return nn.Conv(cout, (k, k), strides=stride, padding=k // 2, use_bias=False)

  cases = [  # name, module, input shape, forward FLOPs (multiply-adds x 2)
      ("stem 7x7/2 conv 3->64", conv(7, 3, 64, 2), (batch, size, size, 3),
       2 * batch * (size // 2) ** 2 * 49 * 3 * 64),
      ("3x3 conv 64->64", conv(3, 64, 64), (batch, h, h, 64), 2 * batch * h * h * 9 * 64 * 64),
      ("1x1 conv 64->256", conv(1, 64, 256), (batch, h, h, 64), 2 * batch * h * h * 64 * 256),
      ("1x1 matmul 64->256", Conv1x1Matmul(256), (batch, h, h, 64),
       2 * batch * h * h * 64 * 256),
      ("batchnorm(train)+relu 256", None, (batch, h, h, 256), 0),
      ("maxpool 3x3/2 64", None, (batch, size // 2, size // 2, 64), 0),
  ]
  rows = []
  for name, module, shape, fwd_flops in cases:
    x = jax.random.normal(key, shape)
    if module is not None:
      params = module.init(key, x)
      fn = lambda p, x, m=module: jnp.sum(m.apply(p, x) ** 2)  # noqa: E731
    elif name.startswith("batchnorm"):
      bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
      params = bn.init(key, x)
      fn = lambda p, x, m=bn: jnp.sum(nn.relu(m.apply(p, x, mutable=["batch_stats"])[0]) ** 2)  # noqa: E731
    else:
      params = {}
      fn = lambda p, x: jnp.sum(nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))) ** 2)  # noqa: E731
    step = jax.jit(jax.grad(fn, argnums=(0, 1)))
    jax.block_until_ready(step(params, x))
    t0 = time.perf_counter()
    for _ in range(steps):
      out = step(params, x)
    jax.block_until_ready(out)
    ms = (time.perf_counter() - t0) / steps * 1e3
    row = {"op": name, "shape": list(shape), "ms": ms}
    if fwd_flops:
      row["gflop_per_s"] = 3 * fwd_flops / ms / 1e6  # forward + two backward products
    else:
      row["gb_per_s"] = 3 * 4 * x.size / ms / 1e6  # read x, read dy, write dx
    rows.append(row)
    rate = (f"{row['gflop_per_s']:7.1f} GFLOP/s" if fwd_flops
            else f"{row['gb_per_s']:7.1f} GB/s (approx.)")
    print(f"{name:>28} {str(tuple(shape)):>20} {ms:9.2f} ms  {rate}")
  return rows


_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z\-]+)\(")
_HLO_OP_NAME = re.compile(r'op_name="([^"]*)"')
_HLO_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_BATCHNORM = re.compile(r"/(downsample_)?bn\d*/")


def _op_role(opcodes: set[str], opcode: str, op_name: str) -> str:
  """What one compiled instruction is, from its opcodes and JAX's op name."""
  if "convolution" in opcodes:
    return "convolution (XLA)"
  if "dot" in opcodes:
    return "matmul (1x1 convs, small convs, head)"
  if opcodes & {"reduce-window", "select-and-scatter"}:
    return "max pool"
  if op_name.startswith("jit(") and "ResNet" not in op_name and "jvp(" not in op_name:
    return "Adam + weight decay"  # the update is outside the model's scope
  if _BATCHNORM.search(op_name):
    return "BatchNorm (+ fused ReLU/add)"
  if "relu" in op_name or op_name.endswith(("/select_n", "/gt")):
    return "ReLU"
  if opcode in ("copy", "transpose", "copy-start"):
    return "copies / layout"
  if "ResNet" not in op_name:
    return "loss and other"
  return "other elementwise in the model"


def hlo_roles(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """Maps each instruction of the compiled step to (what, forward|backward, shape).

  *What* comes from the opcode (a fusion takes the heaviest op it calls:
  convolution, then dot, then pooling) and otherwise from the op name JAX
  records in the metadata (the Flax module path: ``bn2`` is BatchNorm; ops
  outside the model are the optimizer). *Backward* means the op name of the
  instruction or of one it fuses is inside ``transpose(...)``: the VJP of the
  forward pass (a convolution's filter gradient is a YNN fusion whose own op
  name is the forward convolution's).
  """
  bodies: dict[str, set[str]] = {}
  backward_bodies: set[str] = set()  # a YNN fusion's own op_name can be a forward op's
  current = None
  instrs = []
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and "{" in line:
      current = line.split("(")[0].replace("ENTRY", "").split()[-1].lstrip("%")
      bodies[current] = set()
      continue
    m = _HLO_LINE.match(line)
    if not m or current is None:
      continue
    name, shape, opcode = m.groups()
    bodies[current].add(opcode)
    op_name = _HLO_OP_NAME.search(line)
    if op_name and "transpose(" in op_name.group(1):
      backward_bodies.add(current)
    calls = _HLO_CALLS.search(line)
    instrs.append((name, shape.split("{")[0], opcode, op_name.group(1) if op_name else "",
                   calls.group(1) if calls else None))
  roles = {}
  for name, shape, opcode, op_name, calls in instrs:
    what = _op_role(bodies.get(calls, set()) | {opcode}, opcode, op_name)
    roles[name] = (what, "backward" if "transpose(" in op_name or calls in backward_bodies
                  else "forward", shape)
  return roles


def _xplane_op_times(logdir: str) -> dict[str, float]:
  """Summed duration (us) of each traced event name in the newest trace under ``logdir``."""
  import glob

  from xprof.convert import raw_to_tool_data

  path = max(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")),
             key=os.path.getmtime)
  data, _ = raw_to_tool_data.xspace_to_tool_data([path], "trace_viewer", {})
  events = json.loads(data)["traceEvents"]
  times: dict[str, float] = {}
  for ev in events:
    if ev.get("ph") == "X" and "dur" in ev:
      times[ev["name"]] = times.get(ev["name"], 0.0) + float(ev["dur"])
  return times


def profile_step(model_name: str, batch: int, size: int, steps: int,
                 logdir: str) -> dict[str, Any]:
  """An XLA trace of ``steps`` train steps, grouped by what each op is.

  The trace (``jax.profiler``) lands in ``logdir`` (open it with xprof or
  TensorBoard's profile plugin); its per-instruction times are joined with
  the compiled HLO's metadata (:func:`hlo_roles`) into a table of where the
  step's time goes. Needs the ``xprof`` package to read the trace.
  """
  import jax

  compiled, state, (x, y), _, _ = _jax_step(model_name, batch, size, "float32", True)
  state, loss = compiled(state, x, y)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  with jax.profiler.trace(logdir):
    for _ in range(steps):
      state, loss = compiled(state, x, y)
    jax.block_until_ready((state, loss))
  wall_ms = (time.perf_counter() - t0) / steps * 1e3
  roles = hlo_roles(compiled.as_text())
  times = _xplane_op_times(logdir)
  table: dict[str, float] = {}
  for name, us in times.items():
    if name in roles:
      key = " / ".join(roles[name][:2])
      table[key] = table.get(key, 0.0) + us / steps / 1e3
  traced = sum(table.values())
  rows = [{"part": k, "ms_per_step": v, "share": v / traced}
          for k, v in sorted(table.items(), key=lambda kv: -kv[1])]
  top = [{"instruction": n, "part": " / ".join(roles[n][:2]), "shape": roles[n][2],
          "ms_per_step": us / steps / 1e3}
         for n, us in sorted(times.items(), key=lambda kv: -kv[1]) if n in roles][:15]
  print(f"profile {batch}x{size}: {wall_ms:.0f} ms/step wall (under the tracer), "
        f"{traced:.0f} ms of traced ops, {len(roles)} instructions")
  for r in rows:
    print(f"{r['part']:>48} {r['ms_per_step']:9.1f} ms {100 * r['share']:6.1f}%")
  print("the 15 slowest instructions:")
  for t in top:
    print(f"{t['instruction']:>28} {t['part']:>48} {t['shape']:>28} {t['ms_per_step']:8.1f} ms")
  del state, compiled
  gc.collect()
  return {"config": f"{batch}x{size}", "wall_ms_per_step": wall_ms,
          "traced_ms_per_step": traced, "rows": rows, "top": top, "logdir": logdir,
          "unmatched_event_names": sorted(n for n in times if n not in roles)[:20]}


def _time_ms(fn: Callable[[], Any], sync: Callable[[Any], Any], steps: int) -> float:
  """Milliseconds per call of ``fn`` after one untimed call (compilation)."""
  sync(fn())
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn()
  sync(out)
  return (time.perf_counter() - t0) / steps * 1e3


def breakdown(model_name: str, batch: int, size: int, steps: int,
              with_torch: bool = True) -> dict[str, Any]:
  """Where the step's time goes: its parts timed alone, JAX then torch.

  Parts: ``forward_eval`` (BatchNorm on running statistics, a fused
  scale/shift), ``forward_train`` (batch statistics: the difference to
  ``forward_eval`` is BatchNorm's statistics pass), ``forward_backward``
  (the gradient: minus ``forward_train`` is the backward pass), ``adam`` (the
  optimizer update alone) and ``step`` (everything, state donated). The
  differences are estimates: XLA fuses across part boundaries in the full
  step.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from ffr_jax.models import create_model

  model = create_model(model_name, NUM_CLASSES, "float32", conv1x1_as_matmul=True,
                       small_convs_as_matmul=True)
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.adam(LR))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, NUM_CLASSES, batch))
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  # Inputs are arguments, never closed over: XLA constant-folds what depends
  # on constants only, which a real step cannot do.
  def loss_fn(params, stats, x, y):
    out, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out.logits, y).mean(), upd

  fwd_eval = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x).logits)
  fwd_train = jax.jit(loss_fn)
  grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

  def adam(params, grads, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  adam_jit = jax.jit(adam)
  grads = jax.tree.map(jnp.ones_like, params)
  sync = jax.block_until_ready
  jax_ms = {
      "forward_eval": _time_ms(lambda: fwd_eval(params, stats, x), sync, steps),
      "forward_train": _time_ms(lambda: fwd_train(params, stats, x, y), sync, steps),
      "forward_backward": _time_ms(lambda: grad(params, stats, x, y), sync, steps),
      "adam": _time_ms(lambda: adam_jit(params, grads, opt_state), sync, steps),
  }
  full = jax.jit(lambda p, s, o, x, y: (lambda lg: (adam(p, lg[1], o), lg[0][1]))(
      grad(p, s, x, y)))
  jax_ms["step"] = _time_ms(lambda: full(params, stats, opt_state, x, y), sync, steps)
  result: dict[str, Any] = {"config": f"{batch}x{size}", "jax_ms": jax_ms}
  imported = _import_torch() if with_torch else None
  if imported is not None and hasattr(imported[1], model_name):
    result["torch_ms"] = _torch_breakdown(imported, model_name, batch, size, steps)
    result["jax_over_torch_time"] = {
        k: jax_ms[k] / v for k, v in result["torch_ms"].items() if v}
  for part, ms in jax_ms.items():
    torch_ms = result.get("torch_ms", {}).get(part)
    print(f"{part:>18} jax {ms:10.1f} ms" + (f"   torch {torch_ms:10.1f} ms   "
                                             f"time ratio {ms / torch_ms:5.2f}"
                                             if torch_ms else ""))
  return result


def _torch_breakdown(imported: tuple[Any, Any], model_name: str, batch: int, size: int,
                     steps: int) -> dict[str, float]:
  """torch's versions of :func:`breakdown`'s parts (CPU, NCHW, float32)."""
  torch, tvm = imported
  torch.manual_seed(0)
  model = getattr(tvm, model_name)(num_classes=NUM_CLASSES)
  opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  x = torch.randn(batch, 3, size, size)
  y = torch.randint(0, NUM_CLASSES, (batch,))
  sync = lambda out: out  # noqa: E731  (CPU ops are synchronous)

  def forward(train: bool):
    model.train(train)
    with torch.no_grad():
      return model(x)

  def forward_backward():
    model.train()
    opt.zero_grad(set_to_none=False)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss

  def step():
    loss = forward_backward()
    opt.step()
    return loss

  out = {"forward_eval": _time_ms(lambda: forward(False), sync, steps),
         "forward_train": _time_ms(lambda: forward(True), sync, steps),
         "forward_backward": _time_ms(forward_backward, sync, steps)}
  out["adam"] = _time_ms(opt.step, sync, steps)  # gradients of the last backward
  out["step"] = _time_ms(step, sync, steps)
  return out


def _flops(lowered: Any) -> float | None:
  """FLOPs of the step from the HLO before backend passes.

  The compiled executable's analysis is backend-specific (on GPU it skips the
  cuDNN convolution calls), so the unoptimised HLO gives the comparable count.
  """
  try:
    analysis = lowered.cost_analysis()
  except Exception:  # noqa: BLE001  (cost analysis is optional per backend)
    return None
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else {}
  return float(analysis.get("flops", 0.0)) or None


def _import_torch() -> tuple[Any, Any] | None:
  """(torch, torchvision.models) or None when torch is not installed."""
  try:
    import torch
  except ImportError:
    return None
  # On CPU-only machines torchvision's compiled ops (a CUDA build) fail to load;
  # the model definitions do not need them (docs/reference.md, "Library notes").
  if not torch.cuda.is_available():
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
  try:
    import torchvision.models as tvm
  except ImportError:
    return None
  return torch, tvm


def bench_torch(model_name: str, batch: int, size: int, dtype: str, steps: int,
                warmup: int, compile_mode: str = "") -> dict[str, Any] | None:
  """Times torchvision's model + torch.optim.Adam on the same shapes.

  ``compile_mode``: "" runs eager; otherwise the model goes through
  ``torch.compile(mode=...)`` ("default", "max-autotune", ...; forward and
  backward graphs, Adam stays eager); the first warm-up call compiles.
  """
  imported = _import_torch()
  if imported is None:
    return None
  torch, tvm = imported
  if not hasattr(tvm, model_name):
    return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  # On GPUs give torch its usual fast settings (cuDNN autotuning, NHWC); on CPU
  # the plain NCHW model is what the authors' scripts run.
  channels_last = device == "cuda"
  torch.backends.cudnn.benchmark = True
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  torch.manual_seed(0)
  model = getattr(tvm, model_name)(num_classes=NUM_CLASSES).to(device, memory_format=memory_format)
  model.train()
  opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
  y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
  net = model
  if compile_mode:
    net = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)

  def step() -> Any:
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss

  def sync() -> None:
    if device == "cuda":
      torch.cuda.synchronize()

  t0 = time.perf_counter()
  for _ in range(max(warmup, 1 if compile_mode else 0)):
    step()
  sync()
  warmup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  sync()
  elapsed = time.perf_counter() - t0
  result = {"images_per_s": batch * steps / elapsed, "step_s": elapsed / steps,
            "loss": float(loss.detach()), "device": device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "channels_last": channels_last,
            "compile": compile_mode or "eager", "warmup_s": warmup_s}
  del model, net, opt, x, y
  gc.collect()
  return result


def _device_info() -> dict[str, Any]:
  import jax
  dev = jax.devices()[0]
  return {"platform": dev.platform, "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "cpu_count": os.cpu_count(), "host": platform.machine()}


def _print_table(rows: list[dict[str, Any]]) -> None:
  header = (f"{'config':>10} {'1x1 matmul':>10} {'jax img/s':>10} {'torch img/s':>11} "
            f"{'jax/torch':>9} {'compile s':>9} {'GFLOP/s':>8}")
  print(header)
  print("-" * len(header))
  for r in rows:
    torch_ips = r["torch"]["images_per_s"] if r.get("torch") else None
    ratio = f"{r['jax']['images_per_s'] / torch_ips:9.2f}" if torch_ips else f"{'-':>9}"
    torch_s = f"{torch_ips:11.2f}" if torch_ips else f"{'-':>11}"
    gflops = r["jax"].get("gflop_per_s")
    print(f"{r['config']:>10} {str(r['conv1x1_as_matmul']):>10} "
          f"{r['jax']['images_per_s']:10.2f} {torch_s} {ratio} "
          f"{r['jax']['compile_s']:9.1f} {gflops if gflops is None else round(gflops, 1)!s:>8}")


def _append_record(path: str, record: dict[str, Any]) -> None:
  """Adds this run to the JSON file's list of attempts."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  runs = []
  if os.path.exists(path):
    with open(path) as f:
      runs = json.load(f).get("runs", [])
  runs.append(record)
  with open(path, "w") as f:
    json.dump({"runs": runs}, f, indent=1)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  if args.xla_flags:
    # Must happen before jax is imported, which is why jax imports are local.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  matmul_options = {"on": [True], "off": [False], "both": [False, True]}[args.conv1x1_as_matmul]
  record: dict[str, Any] = {
      "label": args.label, "time": datetime.datetime.now().isoformat(timespec="seconds"),
      "model": args.model, "dtype": args.dtype, "steps": args.steps, "warmup": args.warmup,
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "device": _device_info(), "results": []}
  print(f"device: {record['device']}  XLA_FLAGS={record['xla_flags']!r}")
  if args.probe:
    batch, size = parse_configs(args.configs)[0]
    record["probe"] = probe_ops(batch, size, max(args.steps, 3))
  if args.profile:
    batch, size = parse_configs(args.configs)[0]
    record["profile"] = profile_step(args.model, batch, size, max(args.steps, 2),
                                     args.profile)
  if args.breakdown:
    batch, size = parse_configs(args.configs)[0]
    record["breakdown"] = breakdown(args.model, batch, size, args.steps,
                                    with_torch=not args.no_torch)
  for batch, size in parse_configs(args.configs):
    torch_result = None
    if not args.no_torch:
      torch_result = bench_torch(args.model, batch, size, args.dtype, args.steps, args.warmup)
    for as_matmul in matmul_options:
      small = args.small_convs_as_matmul == "on"
      jax_result = bench_jax(args.model, batch, size, args.dtype, as_matmul, args.steps,
                             args.warmup, small)
      row = {"config": f"{batch}x{size}", "batch": batch, "image_size": size,
             "conv1x1_as_matmul": as_matmul, "small_convs_as_matmul": small,
             "jax": jax_result, "torch": torch_result}
      record["results"].append(row)
      _print_table([row])
  print()
  _print_table(record["results"])
  _append_record(args.out, record)
  print(f"\nappended to {args.out}")


if __name__ == "__main__":
  main()
