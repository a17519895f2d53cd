"""What every command shares: logging, the compilation cache, one-line errors.

A user's mistake (a bad flag or config file, a misspelled ``--config.key``,
:data:`USER_ERRORS`) is one ``error: ...`` line and exit code 2; ``--verbose``
shows the traceback. ``--help`` with ``--config`` lists the config's keys with
their values and meanings.
"""

from __future__ import annotations

import ast
import errno
import logging as std_logging
import os
import re
import signal
import sys
import tokenize
from collections.abc import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ffr_jax import config as config_lib
from ffr_jax import lifecycle
from ffr_jax import models
from ffr_jax.data import compose, datasets
from ffr_jax.generation import factory
from ffr_jax.lifecycle import Preempted, exit_code
from ffr_jax.training import methods

# Exit code of a user error (bad flag, config, data); 1 is left to bugs and to
# commands whose checks failed (``generate --verify``).
USAGE_EXIT = 2
INTERRUPT_EXIT = exit_code(signal.SIGINT)
_HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


class UserError(Exception):
  """A mistake in the command line, the config or the data (one line)."""


# What a user's mistake raises in this code base. Anything else is a bug and
# keeps its traceback.
USER_ERRORS = (UserError, ValueError, KeyError, FileNotFoundError,
               NotADirectoryError, IsADirectoryError, FileExistsError,
               PermissionError, app.UsageError)

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the full traceback of an error (for bug reports).")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(os.path.expanduser("~"), ".cache", "ffr_jax", "xla"),
    "Persistent XLA compilation cache ('' to disable): a rerun or a resumed "
    "run skips recompiling, which is most of a small run's start-up.")


class QuietLibraries(std_logging.Filter):
  """INFO lines from our own modules, warnings and errors from everyone;
  a library's traceback only with ``--verbose`` (Orbax logs one per thread
  for a failed save, which the command then reports in one line)."""

  def __init__(self, tracebacks: bool = False):
    super().__init__()
    self.tracebacks = tracebacks

  def filter(self, record) -> bool:
    ours = "ffr_jax" in record.pathname.replace("\\", "/")
    if not ours and not self.tracebacks:
      record.exc_info = record.exc_text = None
    return record.levelno >= std_logging.WARNING or ours


def error_message(e: BaseException) -> str:
  """The one line shown for ``e`` (KeyError's repr quotes are dropped)."""
  if isinstance(e, KeyError) and len(e.args) == 1:
    return str(e.args[0])
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.strerror}: {e.filename}"
  return str(e) or type(e).__name__


def write_failure(e: BaseException) -> str | None:
  """One line for a write the disk refused anywhere in ``e``'s causes."""
  refused = lifecycle.disk_refusal(e)
  if refused is None:
    return None
  path, code = refused
  workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else ""
  where = path or (f"--workdir={workdir}" if workdir else "a file")
  if code in (errno.EACCES, errno.EPERM):  # a read is refused alike
    return (f"{os.strerror(code)}: {where}; fix the permissions or choose "
            "another --workdir.")
  return (f"could not write {where}: {os.strerror(code)}; free space or "
          "choose another --workdir (a rerun resumes).")


def fail(message: str, code: int = USAGE_EXIT) -> None:
  """Prints ``error: message`` on stderr and exits."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _assignment_comments(path: str) -> dict[str, str]:
  """``{"data.root": comment}`` for each commented ``c.data.root = ...``: the
  trailing comment, else the lines right above; a key's first one wins."""
  with open(path, encoding="utf-8") as f:
    source = f.read()
  lines = source.splitlines()
  trailing = {}
  with open(path, encoding="utf-8") as f:
    for tok in tokenize.generate_tokens(f.readline):
      if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][:tok.start[1]].strip():
        trailing[tok.start[0]] = tok.string.lstrip("#").strip()
  out = {}
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)):
      continue
    key = ast.unparse(node.targets[0]).partition(".")[2]
    text = " ".join(trailing[n] for n in range(node.lineno, node.end_lineno + 1)
                    if n in trailing)
    above = node.lineno - 1
    while not text and above > 0 and lines[above - 1].strip().startswith("#"):
      above -= 1
    if not text and above < node.lineno - 1:
      text = " ".join(l.strip().lstrip("#").strip() for l in lines[above:node.lineno - 1])
    if text:
      out.setdefault(key, text)
  return out


def key_meanings(config_path: str) -> dict[str, str]:
  """What each key of a config file means: its comment in ``base_config``, else in the file."""
  return {**_assignment_comments(config_path), **_assignment_comments(config_lib.__file__)}


def config_help(config, config_path: str) -> str:
  """Every ``--config.key`` with its value and meaning, then the valid registry names."""
  meanings = key_meanings(config_path)
  lines = ["Config keys (--config.KEY=VALUE), their values in this config and meanings:"]
  for key, value in sorted(config_lib.flatten(config).items()):
    lines.append(f"  --config.{key}={value!r}  # {meanings.get(key, '?')}")
  lines.append("")
  for key, registry in [("mode", compose.MODES), ("method", methods.METHODS),
                        ("data.name", datasets.DATASETS), ("model.name", models.MODELS),
                        ("generate.generator", factory.GENERATORS)]:
    lines.append(f"  {key}: {', '.join(sorted(registry))}")
  return "\n".join(lines)


def _print_help(argv: Sequence[str]) -> None:
  """The command's docstring and flags, then the config's keys if ``--config`` loads."""
  try:
    # Missing required flags (--workdir) fail validation after parsing: the
    # config is parsed all the same.
    flags.FLAGS([a for a in argv if a not in _HELP_FLAGS], known_only=True)
  except flags.Error:
    pass
  main_module = sys.modules.get("__main__")
  print((getattr(main_module, "__doc__", "") or "").strip() + "\n")
  for name in flags.FLAGS:
    if flags.FLAGS[name].default is None:
      flags.FLAGS[name].default_as_str = None  # not "(default: 'None')"
  print(flags.FLAGS.main_module_help())
  if "config" not in flags.FLAGS or not flags.FLAGS["config"].present:
    return
  try:
    config = flags.FLAGS["config"].value
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    print("\n" + config_help(config, config_lib.split_config_path(path)[0]))
  except Exception as e:  # pylint: disable=broad-except  # help still prints
    print(f"\ncannot list the config's keys: {_last_reason(str(e))}")


def _override_message(e: Exception) -> str:
  """One line for a bad ``--config.key=value``: ml_collections raises an
  AttributeError around a KeyError, whose text is the quoted key and maybe a
  "Did you mean" line."""
  inner = e.args[0] if e.args else e
  text = error_message(inner) if isinstance(inner, BaseException) else str(inner)
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if isinstance(e, (AttributeError, KeyError)) and lines:
    lines[0] = f"unknown config key {lines[0]}."
  return " ".join(lines) or type(e).__name__


def _last_reason(text: str) -> str:
  """The last line of an error text, without its exception class name."""
  lines = [l.strip() for l in text.splitlines() if l.strip() and l.strip() != "."]
  last = lines[-1] if lines else text
  head, sep, rest = last.partition(": ")
  return rest if sep and head.replace(".", "").isidentifier() and head.endswith(
      ("Error", "Exception")) else last


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parsing, with every failure as one line and exit code 2."""
  if any(a in _HELP_FLAGS for a in argv[1:]):
    _print_help(argv)
    sys.exit(0)
  try:
    rest = flags.FLAGS(list(argv))
  except flags.Error as e:
    if "--verbose" in argv:
      raise
    text = str(e)
    if "Traceback" in text:  # config_flags folds the config's traceback in
      fail(f"{text.splitlines()[0].rstrip(':')}: {_last_reason(text)}")
    missing = re.findall(r"Flag (--\w+) must have a value other than None", text)
    if missing:
      fail(f"missing {' and '.join(missing)}; run with --help to see the flags.")
    fail(f"{text.rstrip('.')}. Run with --help to see the flags.")
  except Exception as e:  # pylint: disable=broad-except
    # config_flags raises from inside parsing: an unknown --config key, a
    # value of the wrong type.
    if "--verbose" in argv:
      raise
    fail(_override_message(e))
  if "config" in flags.FLAGS:
    try:
      # config_flags loads the file lazily, on first use: load it now, so a
      # missing or broken file is a usage error like any other.
      _ = list(flags.FLAGS["config"].value.keys())
    except Exception as e:  # pylint: disable=broad-except
      if "--verbose" in argv:
        raise
      path = flags.FLAGS["config"].serialize().partition("=")[2] or "?"
      fail(f"cannot load --config={path}: {_last_reason(str(e))}")
  return rest


def run(main: Callable[[list[str]], int | None],
        commands: Sequence[str] = ()) -> None:
  """Runs ``main(argv)`` with the shared set-up and errors; ``commands`` are
  the subcommands taken as the one positional argument (``analyze embeddings``)."""

  def wrapped(argv: list[str]):
    if commands and (len(argv) != 2 or argv[1] not in commands):
      fail(f"give one command, {' or '.join(commands)}; got "
           f"{' '.join(argv[1:]) or 'none'}.")
    if not commands and len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}")
    # Library INFO logs out of the way (Orbax logs every checkpoint).
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, QuietLibraries) for f in handler.filters):
      handler.addFilter(QuietLibraries(tracebacks=_VERBOSE.value))
    import jax  # pylint: disable=g-import-not-at-top  # not needed by --help
    if _CACHE.value and not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", _CACHE.value)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
      return main(argv)
    except Preempted as e:
      # A clean stop on SIGTERM/SIGINT: the checkpoint is saved.
      print(e, file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    except Exception as e:  # pylint: disable=broad-except
      disk = write_failure(e)
      if disk is not None and not _VERBOSE.value:
        # Exit before the atexit handlers (TensorBoard's event writer) fail
        # on the same disk with tracebacks of their own.
        print(f"error: {disk}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(USAGE_EXIT)  # pylint: disable=protected-access
      if not isinstance(e, USER_ERRORS) or _VERBOSE.value:
        raise
      fail(error_message(e))
    except KeyboardInterrupt:
      # A second Ctrl-C during the first one's clean stop lands here.
      fail("interrupted.", INTERRUPT_EXIT)

  app.run(wrapped, flags_parser=_parse_flags)
