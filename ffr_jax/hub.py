"""Hugging Face Hub references (``hf-hub:ORG/NAME[@REV]``, ``ORG/NAME``) in
huggingface_hub's cache; ``HF_HUB_CACHE``/``HF_HOME``/``HF_HUB_OFFLINE`` are
read at call time (huggingface_hub reads them at import), so a notebook that
sets them late is obeyed."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

HUB_PREFIX = "hf-hub:"
DEFAULT_REVISION = "main"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE = ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class HubRef:

  repo_id: str
  revision: str = DEFAULT_REVISION


def is_hub_ref(value: str) -> bool:
  return str(value).startswith(HUB_PREFIX)


def parse_hub_ref(value: str) -> HubRef:
  """``hf-hub:ORG/NAME[@REVISION]`` -> :class:`HubRef`."""
  if not is_hub_ref(value):
    raise ValueError(f"{value!r} is not a hub reference; expected {HUB_PREFIX}ORG/NAME[@REVISION].")
  repo_id, _, revision = value[len(HUB_PREFIX):].partition("@")
  return hub_ref(repo_id, revision, what=value)


def hub_ref(repo_id: str, revision: str = "", what: str | None = None) -> HubRef:
  """A checked :class:`HubRef`; an empty revision means the default branch."""
  if not _REPO_ID.match(repo_id):
    raise ValueError(
        f"{what or repo_id!r} does not name a hub repository: expected ORG/NAME "
        f"(e.g. {HUB_PREFIX}timm/resnet50.tv_in1k or CompVis/stable-diffusion-v1-4).")
  return HubRef(repo_id, revision or DEFAULT_REVISION)


def looks_like_repo_id(value: str) -> bool:
  """ORG/NAME that is not an existing local path (``generate.model``)."""
  return bool(_REPO_ID.match(str(value))) and not os.path.exists(value)


def cache_dir() -> str:
  """huggingface_hub's cache folder, from the environment as it is now."""
  for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if os.environ.get(var):
      return os.path.expanduser(os.environ[var])
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
  return os.path.join(os.path.expanduser(home), "hub")


def offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def not_found(ref: HubRef, what: str, reason: BaseException | str) -> FileNotFoundError:
  """The one-line error for a repository, revision or file we cannot get."""
  detail = " ".join(str(reason).split())[:300]
  if offline():
    action = ("HF_HUB_OFFLINE=1 allows only the cache: run once with network "
              "(HF_HUB_OFFLINE=0) to download it, or check the id, the revision and "
              "any local path meant")
  else:
    action = ("check the id and revision (e.g. main, flax, bf16 or a commit) and the "
              "network, or pass a local path instead")
  return FileNotFoundError(
      f"{what} of hub repository {ref.repo_id!r} at revision {ref.revision!r} is not in the "
      f"cache {cache_dir()} and could not be downloaded ({detail}): {action}.")


def download_file(ref: HubRef, filename: str) -> str:
  """The local path of one file of ``ref``, from the cache or downloaded into it."""
  from huggingface_hub import hf_hub_download  # pylint: disable=import-outside-toplevel
  try:
    return hf_hub_download(ref.repo_id, filename, revision=ref.revision,
                           cache_dir=cache_dir(), local_files_only=offline())
  except OSError as e:  # huggingface_hub's errors are all OSErrors
    raise not_found(ref, repr(filename), f"{type(e).__name__}: {e}") from e


def download_snapshot(ref: HubRef, allow_patterns: Sequence[str] | None = None,
                      ignore_patterns: Sequence[str] | None = None) -> str:
  """The snapshot folder of ``ref``; offline, the cached one as it is (callers
  check that it holds what they need)."""
  from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
  try:
    return snapshot_download(
        ref.repo_id, revision=ref.revision, cache_dir=cache_dir(),
        local_files_only=offline(),
        allow_patterns=list(allow_patterns) if allow_patterns else None,
        ignore_patterns=list(ignore_patterns) if ignore_patterns else None)
  except OSError as e:
    raise not_found(ref, "the snapshot", f"{type(e).__name__}: {e}") from e
