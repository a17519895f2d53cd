"""Decoding every image mode a dataset may hold to correct 8-bit RGB, and errors.

Each reference below is computed here with numpy from the pixel values the
test wrote (or from the raw decoded values PIL reads for a lossy JPEG), never by
the code under test.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ffr_jax.data import images

RNG = np.random.default_rng(0)
H, W = 5, 7  # not square, so a rotation or a transposition is visible


def _save(tmp_path, im: Image.Image, name: str, **kw) -> str:
  path = str(tmp_path / name)
  im.save(path, **kw)
  return path


def _full(path: str) -> np.ndarray:
  """What :func:`images.decode` gives at the file's own size (no resize)."""
  with Image.open(path) as im:
    size = im.size
  assert size[0] == size[1], "use a square image to decode without resizing"
  return images.decode(path, size[0])


def _gray3(levels: np.ndarray) -> np.ndarray:
  return np.repeat(np.asarray(levels, np.uint8)[..., None], 3, axis=-1)


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  out = np.rint(rgb.astype(np.float64) * alpha[..., None].astype(np.float64) / 255)
  return out.astype(np.uint8)


def _png16(values: np.ndarray, color_type: int) -> bytes:
  """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB)."""
  h, w = values.shape[:2]
  raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

  def chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

  header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_grayscale_png_keeps_its_levels_instead_of_white(tmp_path):
  # The measured defect: levels 691..64807 all came out as 255.
  levels = np.linspace(691, 64807, 36).astype(np.uint16).reshape(6, 6)
  path = _save(tmp_path, Image.fromarray(levels), "g16.png")
  with Image.open(path) as im:
    assert im.mode == "I;16"
  np.testing.assert_array_equal(_full(path), _gray3(levels >> 8))


@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4), (4, 2), (0, 1)])
def test_16_bit_png_of_every_colour_type(tmp_path, color_type, channels):
  values = RNG.integers(0, 65536, (6, 6, channels)).astype(np.uint16)
  path = str(tmp_path / "x.png")
  with open(path, "wb") as f:
    f.write(_png16(values if channels > 1 else values[..., 0], color_type))
  high = (values >> 8).astype(np.uint8)
  expected = {
      1: lambda: _gray3(high[..., 0]),
      2: lambda: _over_black(_gray3(high[..., 0]), high[..., 1]),
      3: lambda: high,
      4: lambda: _over_black(high[..., :3], high[..., 3]),
  }[channels]()
  np.testing.assert_array_equal(_full(path), expected)


def test_8_bit_modes_match_their_definition(tmp_path):
  gray = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
  rgb = RNG.integers(0, 256, (6, 6, 3)).astype(np.uint8)
  bits = RNG.integers(0, 2, (6, 6)).astype(bool)
  cases = {
      "L": (Image.fromarray(gray, "L"), _gray3(gray)),
      "RGB": (Image.fromarray(rgb, "RGB"), rgb),
      "1": (Image.fromarray(bits), _gray3(bits * 255)),
  }
  for mode, (im, expected) in cases.items():
    assert im.mode == mode
    path = _save(tmp_path, im, f"{mode}.png")
    np.testing.assert_array_equal(_full(path), expected, err_msg=mode)


def _palette_image(index: np.ndarray) -> tuple[Image.Image, np.ndarray]:
  palette = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
  im = Image.fromarray(index, "P")
  im.putpalette(palette.ravel().tolist())
  return im, palette


def test_palette_png_is_its_palette_colours(tmp_path):
  index = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
  im, palette = _palette_image(index)
  path = _save(tmp_path, im, "p.png")
  np.testing.assert_array_equal(_full(path), palette[index])


def test_palette_png_with_transparency_is_composited_over_black(tmp_path):
  index = RNG.integers(0, 4, (6, 6)).astype(np.uint8)
  im, palette = _palette_image(index)
  alpha = np.array([0, 100, 200] + [255] * 253, np.uint8)
  path = _save(tmp_path, im, "pt.png", transparency=alpha.tobytes())
  with Image.open(path) as reread:
    assert reread.mode == "P" and "transparency" in reread.info
  np.testing.assert_array_equal(_full(path), _over_black(palette[index], alpha[index]))


def test_alpha_modes_are_composited_over_black(tmp_path):
  gray = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
  rgb = RNG.integers(0, 256, (6, 6, 3)).astype(np.uint8)
  alpha = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
  alpha[0, 0], alpha[0, 1] = 0, 255
  la = Image.fromarray(np.stack([gray, alpha], -1), "LA")
  rgba = Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA")
  np.testing.assert_array_equal(
      _full(_save(tmp_path, la, "la.png")), _over_black(_gray3(gray), alpha))
  np.testing.assert_array_equal(
      _full(_save(tmp_path, rgba, "rgba.png")), _over_black(rgb, alpha))
  # PA cannot be written to a file; the conversion is the same function.
  index = RNG.integers(0, 256, (6, 6)).astype(np.uint8)
  p, palette = _palette_image(index)
  pa = p.convert("PA")
  pa.putalpha(Image.fromarray(alpha, "L"))
  assert pa.mode == "PA"
  np.testing.assert_array_equal(images.to_rgb(pa), _over_black(palette[index], alpha))


def test_in_memory_wide_and_float_modes():
  levels = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
  big_endian = Image.fromarray(levels.astype(">u2"))
  assert big_endian.mode == "I;16B"
  np.testing.assert_array_equal(images.to_rgb(big_endian), _gray3(levels >> 8))
  as_int = Image.fromarray(levels.astype(np.int32))
  assert as_int.mode == "I"
  np.testing.assert_array_equal(images.to_rgb(as_int), _gray3(levels >> 8))
  floats = RNG.uniform(-20, 280, (H, W)).astype(np.float32)
  as_float = Image.fromarray(floats)
  assert as_float.mode == "F"
  np.testing.assert_array_equal(
      images.to_rgb(as_float), _gray3(np.clip(np.rint(floats), 0, 255)))


def test_cmyk_jpeg_matches_the_naive_conversion(tmp_path):
  cmyk = RNG.integers(0, 256, (6, 6, 4)).astype(np.uint8)
  path = _save(tmp_path, Image.fromarray(cmyk, "CMYK"), "cmyk.jpg", quality=95)
  with Image.open(path) as im:
    assert im.mode == "CMYK"
    stored = np.asarray(im).astype(np.int64)  # what the lossy file holds
  nk = 255 - stored[..., 3:]
  expected = nk - np.floor(stored[..., :3] * nk / 255 + 0.5).astype(np.int64)
  np.testing.assert_array_equal(_full(path), expected.astype(np.uint8))


def test_ycbcr_matches_the_jfif_formulas():
  ycc = RNG.integers(16, 240, (H, W, 3)).astype(np.float64)
  y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
  expected = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr,
                       y + 1.772 * cb], -1)
  got = images.to_rgb(Image.fromarray(ycc.astype(np.uint8), "YCbCr"))
  # PIL's fixed-point tables differ from the exact formulas by at most 1 level.
  assert np.abs(got.astype(np.float64) - np.clip(expected, 0, 255)).max() <= 1.0


@pytest.mark.parametrize("orientation,upright", [
    (1, lambda a: a), (2, np.fliplr), (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
  stored = RNG.integers(0, 256, (H, W, 3)).astype(np.uint8)
  exif = Image.Exif()
  exif[0x0112] = orientation
  for ext in ("png", "jpg"):
    path = _save(tmp_path, Image.fromarray(stored), f"o.{ext}", exif=exif,
                 **({"quality": 100} if ext == "jpg" else {}))
    with Image.open(path) as im:
      raw = np.asarray(im.convert("RGB"))  # the stored pixels, not turned
    with Image.open(path) as im:
      got = images.to_rgb(im)
    np.testing.assert_array_equal(got, upright(raw), err_msg=ext)


def test_decode_resizes_after_converting(tmp_path):
  levels = np.full((10, 10), 40000, np.uint16)
  path = _save(tmp_path, Image.fromarray(levels), "g.png")
  out = images.decode(path, 4)
  assert out.shape == (4, 4, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.full((4, 4, 3), 40000 >> 8, np.uint8))


def _truncated_png(tmp_path) -> str:
  path = _save(tmp_path, Image.fromarray(RNG.integers(0, 256, (32, 32, 3)).astype(
      np.uint8)), "t.png")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  return path


@pytest.mark.parametrize("content", ["empty", "garbage", "truncated", "missing"])
def test_decode_raises_one_clear_error_naming_the_file(tmp_path, content):
  path = str(tmp_path / "bad.png")
  if content == "empty":
    open(path, "wb").close()
  elif content == "garbage":
    with open(path, "wb") as f:
      f.write(b"not an image at all" * 10)
  elif content == "truncated":
    path = _truncated_png(tmp_path)
  with pytest.raises(images.UnreadableImageError, match="rerun") as info:
    images.decode(path, 8)
  assert isinstance(info.value, ValueError) and info.value.path == path
  assert path in str(info.value) and "\n" not in str(info.value)


def _corrupt_in_place_keeping_size_and_time(path: str) -> None:
  st = os.stat(path)
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 3:] = bytes(len(data) - len(data) // 3)  # zeroed tail
    f.seek(0)
    f.write(data)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert os.stat(path).st_size == st.st_size


def test_verification_cache_notices_a_file_corrupted_in_place(tmp_path):
  # The measured defect: the cache trusted (size, mtime), so this file passed.
  paths = [_save(tmp_path, Image.fromarray(RNG.integers(0, 256, (32, 32, 3)).astype(
      np.uint8)), f"{i}.png") for i in range(3)]
  cache = str(tmp_path / "cache.json")
  assert images.find_unreadable(paths, cache_path=cache) == {}
  _corrupt_in_place_keeping_size_and_time(paths[1])
  assert list(images.find_unreadable(paths, cache_path=cache)) == [paths[1]]


def test_verification_cache_skips_decoding_unchanged_bytes(tmp_path, monkeypatch):
  paths = [_save(tmp_path, Image.fromarray(RNG.integers(0, 256, (8, 8, 3)).astype(
      np.uint8)), f"{i}.png") for i in range(3)]
  cache = str(tmp_path / "cache.json")
  images.find_unreadable(paths, cache_path=cache)
  decoded = []
  real = images._unreadable  # pylint: disable=protected-access
  monkeypatch.setattr(images, "_unreadable", lambda p: decoded.append(p) or real(p))
  os.utime(paths[0], ns=(5, 5))  # a new time with the same bytes: still known
  assert images.find_unreadable(paths, cache_path=cache) == {} and decoded == []


def test_verification_flags_missing_and_truncated_files(tmp_path):
  gone = str(tmp_path / "gone.png")
  bad = images.find_unreadable([gone, _truncated_png(tmp_path)])
  assert sorted(bad) == sorted([gone, str(tmp_path / "t.png")])
  assert "FileNotFoundError" in bad[gone]
