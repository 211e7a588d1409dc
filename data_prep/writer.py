"""TFRecord shards, TFDS metadata and stats.json of a data_prep output directory.

Shards are named as TFDS expects (`{dataset}-{split}.tfrecord-{i:05d}-of-{n:05d}`), written under
a temporary name in the same directory and renamed when complete, so a final name means a
complete shard. Arrays are stored as raw bytes (tfds `Encoding.BYTES`): the decoded features have
exactly the dtypes and shapes of the data contract (docs/design.md), and serialization stays cheap.
"""
import os
import pathlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

STATS_FILE = "stats.json"
CHANNELS = 5


def features(height: int, width: int) -> tfds.features.FeaturesDict:
  """The example features of the data contract (docs/design.md)."""
  def tensor(shape, dtype):
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
  return tfds.features.FeaturesDict({
      "scan_id": tfds.features.Text(),
      "range_image": tensor((height, width, CHANNELS), np.float32),
      "label": tensor((height, width), np.uint8),
      "weak_label": tensor((height, width), np.uint8),
      "points": tensor((None, 4), np.float32),
      "point_label": tensor((None,), np.uint8),
      "point_weak_label": tensor((None,), np.uint8),
      "point_row": tensor((None,), np.int32),
      "point_col": tensor((None,), np.int32),
  })


def _varint(value: int) -> bytes:
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _header(field: int, length: int) -> bytes:
  """Protobuf key + length of a length-delimited field."""
  return _varint(field << 3 | 2) + _varint(length)


def _feature_entry(key: bytes, value: bytes) -> list[bytes]:
  """Features.feature map entry {1: key, 2: Feature{bytes_list: BytesList{value: [value]}}}."""
  bytes_list = len(_header(1, len(value))) + len(value)
  feature = len(_header(1, bytes_list)) + bytes_list
  entry = len(_header(1, len(key))) + len(key) + len(_header(2, feature)) + feature
  return [_header(1, entry), _header(1, len(key)), key, _header(2, feature),
          _header(1, bytes_list), _header(1, len(value)), value]


class ExampleEncoder:
  """Example dict -> `tf.train.Example` bytes, as tfds would serialize it, deterministically.

  Every feature is one bytes value (Text: UTF-8; tensors: raw bytes, tfds Encoding.BYTES), so
  the wire format is written directly with sorted map keys: byte-identical to tfds's
  `SerializeToString(deterministic=True)` (tested), much faster (benchmarks/bench_data_prep.py),
  and independent of the process (the protobuf runtime's map order is not).
  """

  def __init__(self, height: int, width: int):
    self.features = features(height, width)
    self._specs = {k: (v.shape, np.dtype(v.np_dtype)) for k, v in self.features.items()
                   if k != "scan_id"}

  def _value(self, key: str, value) -> bytes:
    if key == "scan_id":
      return value.encode() if isinstance(value, str) else bytes(value)
    shape, dtype = self._specs[key]
    value = np.asarray(value)
    if value.dtype != dtype or len(value.shape) != len(shape) or any(
        s is not None and s != v for s, v in zip(shape, value.shape)):
      raise ValueError(f"feature {key}: got {value.dtype}{list(value.shape)}, expected "
                       f"{dtype}{list(shape)}")
    return np.ascontiguousarray(value).tobytes()

  def __call__(self, example: dict[str, Any]) -> bytes:
    if set(example) != set(self.features.keys()):
      raise ValueError(f"example keys {sorted(example)} != {sorted(self.features.keys())}")
    parts = []
    for key in sorted(example):
      parts += _feature_entry(key.encode(), self._value(key, example[key]))
    return b"".join([_header(1, sum(map(len, parts)))] + parts)  # One copy of the arrays.


def shard_name(dataset: str, split: str, index: int, num_shards: int) -> str:
  return f"{dataset}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def temp_path(final: pathlib.Path) -> pathlib.Path:
  """A sibling name that TFDS never mistakes for a shard (its file pattern is a full match)."""
  return final.with_name(f"{final.name}.tmp-{os.getpid()}")


def is_temp(path: pathlib.Path) -> bool:
  """A shard's (`temp_path`) or a file's (`files.atomic_path`) unfinished temporary."""
  return ".tmp-" in path.name or (path.name.startswith(".") and path.name.endswith(".tmp"))


class ShardWriter:
  """Writes one shard to a temporary file; `commit` renames it, `abort` deletes it."""

  def __init__(self, final: pathlib.Path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only the writing process)
    self.final = final
    self.tmp = temp_path(final)
    self._writer = tf.io.TFRecordWriter(str(self.tmp))
    self.count = 0

  def write(self, record: bytes) -> None:
    self._writer.write(record)
    self.count += 1

  def commit(self) -> int:
    """Closes and renames the shard; returns its size in bytes."""
    self._writer.close()
    size = self.tmp.stat().st_size
    os.replace(self.tmp, self.final)
    return size

  def abort(self) -> None:
    self._writer.close()
    self.tmp.unlink(missing_ok=True)


def write_tfds_metadata(out_dir: pathlib.Path, feats: tfds.features.FeaturesDict,
                        shard_lengths: dict[str, list[int]], num_bytes: dict[str, int],
                        description: str) -> None:
  """dataset_info.json + features.json so that `tfds.builder_from_directory(out_dir)` loads."""
  split_infos = [tfds.core.SplitInfo(name=split, shard_lengths=lengths,
                                     num_bytes=num_bytes[split])
                 for split, lengths in shard_lengths.items()]
  tfds.folder_dataset.write_metadata(data_dir=out_dir, features=feats, split_infos=split_infos,
                                     check_data=False, description=description)


# ----------------------------------------------------------------------------- statistics
def empty_stats(num_classes: int) -> dict[str, Any]:
  """Additive per-split statistics (sums; `finalize_stats` turns them into stats.json)."""
  return {"num_scans": 0, "num_points": 0, "num_weak_points": 0, "num_nonfinite_dropped": 0,
          "class_counts": np.zeros(num_classes, np.int64),
          "weak_class_counts": np.zeros(num_classes, np.int64),
          "num_pixels": 0, "pixel_sum": np.zeros(CHANNELS), "pixel_sumsq": np.zeros(CHANNELS)}


def add_stats(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
  return {k: np.asarray(total[k]) + np.asarray(part[k]) if isinstance(total[k], np.ndarray)
          else total[k] + part[k] for k in total}


def stats_to_json(stats: dict[str, Any]) -> dict[str, Any]:
  return {k: v.tolist() if isinstance(v, np.ndarray) else int(v) if isinstance(v, np.integer)
          else v for k, v in stats.items()}


def stats_from_json(obj: dict[str, Any]) -> dict[str, Any]:
  return {k: np.asarray(v) if isinstance(v, list) else v for k, v in obj.items()}


def finalize_stats(stats: dict[str, Any]) -> dict[str, Any]:
  """The stats.json entry of a split: counts, fractions, channel mean/std over valid pixels."""
  pixels = max(int(stats["num_pixels"]), 1)
  mean = np.asarray(stats["pixel_sum"], np.float64) / pixels
  var = np.maximum(np.asarray(stats["pixel_sumsq"], np.float64) / pixels - mean**2, 0.0)
  points = int(stats["num_points"])
  return {
      "num_scans": int(stats["num_scans"]), "num_points": points,
      "num_weak_points": int(stats["num_weak_points"]),
      "weak_fraction": int(stats["num_weak_points"]) / points if points else 0.0,
      "class_counts": [int(c) for c in stats["class_counts"]],
      "weak_class_counts": [int(c) for c in stats["weak_class_counts"]],
      "mean": mean.tolist(), "std": np.sqrt(var).tolist(),
      "num_pixels": int(stats["num_pixels"]),
      "num_nonfinite_dropped": int(stats["num_nonfinite_dropped"]),
  }
