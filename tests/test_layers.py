"""The package's import structure: no circle, no import from a lower layer to a
higher one, and nothing imports a command (docs/design.md, "Layers")."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ffr_jax"
COMMANDS = {"ffr_jax.main", "ffr_jax.generate", "ffr_jax.sweep",
            "ffr_jax.report", "ffr_jax.analyze", "ffr_jax.data_summary",
            "ffr_jax.benchmark"}
# Lowest first; a module is in the layer of its longest matching prefix (a
# package's __init__ is in its package's layer). A module may import its own
# layer and lower ones.
LAYERS = {
    # Infrastructure every layer uses; the results file format and the metric
    # writer are here because training writes them.
    "base": ("ffr_jax.config", "ffr_jax.registry", "ffr_jax.progress",
             "ffr_jax.hub", "ffr_jax.mesh", "ffr_jax.lifecycle",
             "ffr_jax.reporting.results", "ffr_jax.reporting.writer"),
    "data": ("ffr_jax.data", "ffr_jax.models", "ffr_jax.evaluation"),
    "generation": ("ffr_jax.generation", "ffr_jax.demo"),
    # The built-in benchmark's upstream pretraining is a training job.
    "training": ("ffr_jax.training", "ffr_jax.demo.upstream"),
    "results": ("ffr_jax.reporting", "ffr_jax.analysis"),
    "experiments": ("ffr_jax.experiments",),
    "commands": ("ffr_jax.cli", *COMMANDS),
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imports() -> dict[str, set[str]]:
  """module -> the ffr_jax modules it imports (anywhere in the file)."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        # ``from pkg import mod`` imports the submodule (and runs pkg's
        # __init__, which is a namespace here).
        targets = [f"{node.module}.{a.name}"
                   if f"{node.module}.{a.name}" in modules else node.module
                   for a in node.names]
      else:
        continue
      out |= {t for t in targets if t in modules and t != name}
    graph[name] = out
  return graph


def _layer(module: str) -> int:
  """The index in LAYERS of ``module``'s layer (longest matching prefix)."""
  matches = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS.values())
             for prefix in prefixes
             if module == prefix or module.startswith(prefix + ".")]
  assert matches, f"{module} is in no layer: add it to LAYERS"
  return max(matches)[1]


def test_no_module_imports_a_higher_layer():
  # The root package (an empty namespace) is in no layer.
  graph = {m: deps - {"ffr_jax"} for m, deps in _imports().items()
           if m != "ffr_jax"}
  layer = {m: _layer(m) for m in graph}
  names = list(LAYERS)
  offenders = sorted(f"{m} ({names[layer[m]]}) imports {d} ({names[layer[d]]})"
                     for m, deps in graph.items() for d in deps
                     if layer[d] > layer[m])
  assert not offenders, "\n".join(offenders)


def test_no_module_imports_a_command():
  offenders = {m: sorted(deps & COMMANDS) for m, deps in _imports().items()
               if deps & COMMANDS}
  assert not offenders


def test_there_is_no_import_circle():
  graph = _imports()
  state: dict[str, int] = {}
  path: list[str] = []

  def visit(node: str) -> None:
    state[node] = 1
    path.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 1:
        raise AssertionError(" -> ".join(path[path.index(dep):] + [dep]))
      if dep not in state:
        visit(dep)
    path.pop()
    state[node] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module)
