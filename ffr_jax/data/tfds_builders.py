"""Optional TFDS builders (array_record) for the datasets, and a reader.

Each builder reads the official layout from ``manual_dir`` with the project's
own loader (same splits and skips as from folders) and writes the splits before
any bias ratio. Configs: ``image`` (re-encoded; preparing needs TensorFlow) and
``tensor<S>`` (decoded uint8 ``S x S``; no TensorFlow, no decoding on read).

Reading::

    splits = tfds_splits("ffr_spuco_animals/tensor64", data_dir, spec)
    splits = bias.bias_splits(splits, 0.95, seed=0)
    loader = pipeline.make_train_loader(
        splits.train, scheme, cfg.data, 128, seed, store=TfdsImages(data_dir))

Paths are keys ``tfds://{name}/{config}/{split}/{relative path}#{record}``, so
sorting by path follows the file names and :class:`TfdsImages` needs no state.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ffr_jax.data import images as images_lib
from ffr_jax.data.types import (SOURCE_NAMES, DatasetSpec, DatasetSplits,
                                Examples, GroupScheme)

TFDS_PREFIX = "tfds://"
SPLITS = ("train", "val", "test")
# Images decoded per thread-pool round while writing tensor features; bounds
# the memory held by decoded-but-not-yet-written images.
_DECODE_CHUNK = 256
_READ_CHUNK = 1024

LoadSplits = Callable[[str, int], DatasetSplits]


@dataclasses.dataclass(eq=False)
class FfrConfig(tfds.core.BuilderConfig):
  """``image_size`` 0: the encoded image; ``S > 0``: a uint8 ``S x S x 3`` tensor."""

  image_size: int = 0
  split_seed: int = 0


def tensor_config(image_size: int, split_seed: int = 0) -> FfrConfig:
  """The config storing decoded ``image_size`` images (no TF needed)."""
  suffix = f"_seed{split_seed}" if split_seed else ""
  return FfrConfig(name=f"tensor{image_size}{suffix}", image_size=image_size,
                   split_seed=split_seed,
                   description=f"uint8 {image_size}x{image_size} tensors.")


_CONFIGS = [
    FfrConfig(name="image", description="Encoded images (preparing needs TF)."),
    tensor_config(64),
    tensor_config(224),
]


class _FfrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Official layout in ``manual_dir`` -> array_record splits; ``load_splits``
  and ``spec`` default to the registered dataset's."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _CONFIGS
  DATASET = ""  # the ffr_jax dataset name

  def __init__(self, *, load_splits: LoadSplits | None = None,
               spec: DatasetSpec | None = None, file_format: Any = None,
               **kwargs: Any):
    self._load_splits = load_splits
    self._spec = spec
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _definition(self) -> Any:
    from ffr_jax.data import datasets  # pylint: disable=g-import-not-at-top
    return datasets.get_dataset(self.DATASET)

  @property
  def spec(self) -> DatasetSpec:
    return self._spec or self._definition().spec

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    if size:
      image = tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8)
    else:
      image = tfds.features.Image(shape=(None, None, 3))
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.DATASET} for ffr_jax, before any bias ratio.",
        features=tfds.features.FeaturesDict({
            "image": image,
            "y": tfds.features.ClassLabel(names=list(self.spec.class_names)),
            "b": tfds.features.ClassLabel(names=list(self.spec.bias_names)),
            "source": tfds.features.ClassLabel(names=list(SOURCE_NAMES)),
            "path": tfds.features.Text(),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    root = os.fspath(dl_manager.manual_dir)
    load = self._load_splits or self._definition().load
    splits = load(root, self.builder_config.split_seed)
    return {name: self._generate_examples(splits.split(name), root)
            for name in SPLITS}

  def _generate_examples(self, examples: Examples, root: str
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ``(relative path, features)``; the path is the unique key."""
    rel = [os.path.relpath(str(p), root) for p in examples.path]
    for i, image in enumerate(self._images(examples)):
      yield rel[i], {
          "image": image, "y": int(examples.y[i]), "b": int(examples.b[i]),
          "source": int(examples.source[i]), "path": rel[i]}

  def _images(self, examples: Examples) -> Iterator[Any]:
    size = self.builder_config.image_size
    paths = [str(p) for p in examples.path]
    if not size:
      yield from paths  # tfds.features.Image reads and encodes the file
      return
    with concurrent.futures.ThreadPoolExecutor(2 * (os.cpu_count() or 1)) as pool:
      for start in range(0, len(paths), _DECODE_CHUNK):
        chunk = paths[start:start + _DECODE_CHUNK]
        yield from pool.map(lambda p: images_lib.decode(p, size), chunk)


class FfrSpucoAnimals(_FfrBuilder):
  """SpuCo Animals (birds + dogs) from the official SpuCo folders."""

  DATASET = "spuco_animals"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place root/spuco_birds/{train,val,test}/{landbirds,waterbirds}/"
      "{land,water}/* and root/spuco_dogs/{train,val,test}/"
      "{small_dogs,big_dogs}/{indoor,outdoor}/* in the manual dir.")


class FfrCelebaHq(_FfrBuilder):
  """CelebA-HQ (Smiling x Male) from CelebAMask-HQ."""

  DATASET = "celeba_hq"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place root/CelebA-HQ-img/{0..29999}.jpg and "
      "root/CelebAMask-HQ-attribute-anno.txt in the manual dir.")


class FfrUtkFace(_FfrBuilder):
  """UTKFace (gender x young/old) from the flat UTKFace folder."""

  DATASET = "utk_face"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the UTKFace files [age]_[gender]_[race]_[date].jpg.chip.jpg "
      "in the manual dir.")


class FfrWaterbirds(_FfrBuilder):
  """Waterbirds (landbird/waterbird x land/water) with its official splits."""

  DATASET = "waterbirds"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place root/waterbird_complete95_forest2water2/ (metadata.csv and the "
      "species folders) in the manual dir.")


# CelebA and the folder dataset take their names from the config and the data,
# which a TFDS builder's fixed features cannot; they read their folders.
BUILDERS: dict[str, type[_FfrBuilder]] = {
    b.DATASET: b for b in (FfrSpucoAnimals, FfrCelebaHq, FfrUtkFace, FfrWaterbirds)}


def prepare(dataset: str, manual_dir: str, data_dir: str,
            config: str | FfrConfig = "tensor224", **builder_kwargs: Any
            ) -> _FfrBuilder:
  """Prepares ``dataset`` from its official folder; returns the builder."""
  if dataset not in BUILDERS:
    raise ValueError(f"No TFDS builder for {dataset!r}; have {sorted(BUILDERS)}.")
  builder = BUILDERS[dataset](data_dir=data_dir, config=config, **builder_kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _split_key(key: str) -> tuple[str, str, int]:
  """``tfds://name/config/split/rel#record`` -> (``name/config``, split, record)."""
  body, record = key[len(TFDS_PREFIX):].rsplit("#", 1)
  name, config, split, _ = body.split("/", 3)
  return f"{name}/{config}", split, int(record)


@dataclasses.dataclass(eq=False)
class TfdsImages:
  """An ``ImageStore`` for :func:`tfds_examples` keys; other keys are files.

  Opens the data lazily, once per process, so it pickles cheaply into workers.
  """

  data_dir: str
  _sources: dict[tuple[str, str], Any] = dataclasses.field(
      default_factory=dict, repr=False)

  def __getstate__(self) -> dict[str, Any]:
    return {"data_dir": self.data_dir, "_sources": {}}

  def source(self, name: str, split: str) -> Any:
    if (name, split) not in self._sources:
      self._sources[(name, split)] = tfds.data_source(
          name, split=split, data_dir=self.data_dir, download=False)
    return self._sources[(name, split)]

  def load(self, key: str, size: int) -> np.ndarray:
    if not key.startswith(TFDS_PREFIX):
      return images_lib.decode(key, size)
    name, split, record = _split_key(key)
    image = np.asarray(self.source(name, split)[record]["image"], np.uint8)
    if image.shape[:2] != (size, size):
      # Same resize as images.decode, so files and TFDS agree.
      image = np.asarray(Image.fromarray(image).resize(
          (size, size), Image.BILINEAR), np.uint8)
    return image


def tfds_examples(name: str, data_dir: str, split: str) -> Examples:
  """A prepared split (``name`` = ``"<builder>/<config>"``) keyed for
  :class:`TfdsImages`, sorted by original path; images are not decoded."""
  if name.count("/") != 1:
    raise ValueError(f"name={name!r}: expected '<builder>/<config>'.")
  source = tfds.data_source(
      name, split=split, data_dir=data_dir, download=False,
      decoders={"image": tfds.decode.SkipDecoding()})
  keys, ys, bs, srcs = [], [], [], []
  for start in range(0, len(source), _READ_CHUNK):
    records = source.__getitems__(range(start, min(start + _READ_CHUNK,
                                                   len(source))))
    for offset, r in enumerate(records):
      path = r["path"].decode() if isinstance(r["path"], bytes) else r["path"]
      keys.append(f"{TFDS_PREFIX}{name}/{split}/{path}#{start + offset}")
      ys.append(r["y"])
      bs.append(r["b"])
      srcs.append(r["source"])
  return Examples.from_lists(keys, ys, bs, np.asarray(srcs, np.int32)).sorted()


def tfds_splits(name: str, data_dir: str, spec: DatasetSpec) -> DatasetSplits:
  """All three prepared splits, as the folder loaders return them."""
  return DatasetSplits(spec=spec, **{s: tfds_examples(name, data_dir, s)
                                     for s in SPLITS})


def tfds_source(name: str, data_dir: str, split: str, scheme: GroupScheme,
                image_size: int, cache: bool = False) -> Any:
  """A pipeline ``RecordSource`` straight from a prepared split."""
  from ffr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.examples_source(
      tfds_examples(name, data_dir, split), scheme, image_size,
      store=TfdsImages(data_dir), cache=cache)
