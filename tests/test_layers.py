"""The package's import structure: no circle, and nothing imports a command."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ffr_jax"
COMMANDS = {"ffr_jax.main", "ffr_jax.generate", "ffr_jax.sweep",
            "ffr_jax.report", "ffr_jax.analyze", "ffr_jax.data.__main__",
            "ffr_jax.demo.__main__"}


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
