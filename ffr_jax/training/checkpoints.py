"""A stage's Orbax checkpoints, and restores that step over damaged ones.

A checkpoint that does not restore (a torn write, a bad block, a file removed
or overwritten by hand) is moved aside to ``checkpoints/<step>.damaged`` with
one warning, never deleted, and the next older one is tried. Orbax lists only
folders named by a bare step number, so it ignores those.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from ffr_jax import lifecycle
from jax.experimental import multihost_utils

from ffr_jax.training import state as state_lib

DAMAGED_SUFFIX = ".damaged"
# Failures of the disk rather than of the checkpoint: told as such, nothing
# moved (a read-only or full disk could not take a rename anyway).
_DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EDQUOT)


class DamagedCheckpoint(ValueError):
  """A checkpoint that does not restore."""

  def __init__(self, path: str, step: int, cause: BaseException):
    self.path, self.step = path, step
    self.reason = _reason(cause)
    super().__init__(
        f"checkpoint {path} does not restore ({self.reason}); rerun the "
        "training command: it sets it aside and retrains from the one before.")


def manager(stage_dir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(stage_dir), "checkpoints"),
      # Every checkpoint holds the best variables so far, so the latest one is
      # all a resume or the next stage needs; the one before is the fallback
      # when it is damaged. Temporary folders left by a SIGKILL are removed:
      # the workdir lock guarantees that no other process is writing one.
      options=ocp.CheckpointManagerOptions(
          preservation_policy=ocp.checkpoint_managers.LatestN(2), create=True,
          cleanup_tmp_directories=True))


def save(mgr: ocp.CheckpointManager, step: int, state, best, meta: dict
         ) -> None:
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      best=ocp.args.StandardSave(best),
      meta=ocp.args.JsonSave(meta)))


def restore_latest(mgr: ocp.CheckpointManager, state, best,
                   check: Callable[[dict], None] = lambda meta: None
                   ) -> tuple[Any, Any, dict] | None:
  """(state, best, meta) of the newest checkpoint that restores, or None.

  ``state`` and ``best`` give the shapes. ``check(meta)`` runs before the
  arrays are restored, so a checkpoint of other settings is refused (by its
  exception) rather than taken for damage. Damaged ones are set aside.
  """
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      meta = _restore(mgr, step, "meta", ocp.args.JsonRestore())
      if not isinstance(meta, dict):
        raise DamagedCheckpoint(_step_path(mgr, step), step, ValueError(
            f"meta holds a {type(meta).__name__}, not a dict"))
      check(meta)
      return (_restore(mgr, step, "state", ocp.args.StandardRestore(
                  state_lib.abstract_like(state))),
              _restore(mgr, step, "best", ocp.args.StandardRestore(
                  state_lib.abstract_like(best))),
              meta)
    except DamagedCheckpoint as e:
      set_aside(mgr, e)
  return None


def restore_best(mgr: ocp.CheckpointManager, abstract) -> Any:
  """The best variables of the newest checkpoint (a finished stage's);
  DamagedCheckpoint if it does not restore (nothing is moved)."""
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {mgr.directory}.")
  return _restore(mgr, step, "best", ocp.args.StandardRestore(abstract))


def set_aside(mgr: ocp.CheckpointManager, damaged: DamagedCheckpoint) -> None:
  """Logs why a step does not restore and renames it ``<step>.damaged``."""
  path = _step_path(mgr, damaged.step)
  target = path + DAMAGED_SUFFIX
  n = 1
  while os.path.exists(target):  # damaged again after a retrain
    n += 1
    target = f"{path}{DAMAGED_SUFFIX}-{n}"
  logging.warning("Checkpoint %s does not restore (%s); moved it to %s and "
                  "going back to the one before.", damaged.path,
                  damaged.reason, os.path.basename(target))
  if jax.process_index() == 0:
    os.rename(path, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"ffr_set_aside_{damaged.step}")
  mgr.reload()


def _restore(mgr, step: int, item: str, args):
  """One item of a checkpoint; any failure but the disk's is damage."""
  try:
    return getattr(mgr.restore(step, args=ocp.args.Composite(**{item: args})),
                   item)
  except Exception as e:  # pylint: disable=broad-except  # Orbax raises many kinds
    _raise_disk_error(e)
    raise DamagedCheckpoint(os.path.join(_step_path(mgr, step), item), step,
                            e) from e


def _step_path(mgr, step: int) -> str:
  return os.path.join(str(mgr.directory), str(step))


def _raise_disk_error(e: BaseException) -> None:
  """Re-raises ``e`` when the disk refused it (space, permissions, I/O),
  also as tensorstore's text: that is no damage to move aside."""
  if lifecycle.disk_refusal(e) is not None:
    raise e
  while e is not None:
    if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
      raise e
    e = e.__cause__ or e.__context__


def _reason(e: BaseException) -> str:
  """The first line of the innermost cause that says something."""
  reasons = []
  while e is not None:
    text = str(e).strip()
    if text:
      reasons.append(f"{type(e).__name__}: {text.splitlines()[0][:300]}")
    e = e.__cause__ or e.__context__
  return reasons[-1] if reasons else "unknown error"
