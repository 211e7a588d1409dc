"""A tiny, learnable dataset in the data_prep output format (16x64 scans), for training tests.

Every pixel of a 16x64 KITTI-geometry grid gets one point at its center direction; the class of
a point decides its range and remission (with noise), so a small network can learn it in a few
dozen steps. Written with tfds like data_prep does, so `tfds.builder_from_directory` loads it.
"""
import json
import os

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from coarse3d_jax.data import datasets
from coarse3d_jax.data import projection
from configs import demo

HEIGHT, WIDTH = 16, 64
CLASSES = (1, 9, 11, 15)  # car, road, sidewalk, vegetation in SemanticKITTI learning ids.


def features(height: int = HEIGHT, width: int = WIDTH) -> tfds.features.FeaturesDict:
  tensor = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "scan_id": tfds.features.Text(),
      "range_image": tensor(shape=(height, width, 5), dtype=np.float32),
      "label": tensor(shape=(height, width), dtype=np.uint8),
      "weak_label": tensor(shape=(height, width), dtype=np.uint8),
      "points": tensor(shape=(None, 4), dtype=np.float32),
      "point_label": tensor(shape=(None,), dtype=np.uint8),
      "point_weak_label": tensor(shape=(None,), dtype=np.uint8),
      "point_row": tensor(shape=(None,), dtype=np.int32),
      "point_col": tensor(shape=(None,), dtype=np.int32),
  })


def make_scan(rng: np.random.Generator, info: datasets.DatasetInfo, weak_fraction: float):
  """Points (N, 4) and labels (N,) of one scan, ~85% of the pixels hit."""
  rows, cols = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
  fov = info.fov_up - info.fov_down
  pitch = np.deg2rad(info.fov_up - (rows + 0.5) / HEIGHT * fov)
  yaw = np.deg2rad((cols + 0.5) / WIDTH * 360.0 - 180.0)
  block = (cols // 8 + rng.integers(4)) % 3
  cls_index = np.where(rows >= 11, 1, np.array([0, 2, 3])[block])
  cls = np.asarray(CLASSES)[cls_index]
  depth = 4.0 + 6.0 * cls_index + rng.normal(0, 0.8, cls.shape)
  keep = rng.random(cls.shape) < 0.85
  x = depth * np.cos(pitch) * np.cos(-yaw)
  y = depth * np.cos(pitch) * np.sin(-yaw)
  z = depth * np.sin(pitch)
  remission = 0.15 + 0.2 * cls_index + rng.normal(0, 0.05, cls.shape)
  points = np.stack([x, y, z, remission], -1)[keep].astype(np.float32)
  labels = cls[keep].astype(np.uint8)
  weak = np.where(rng.random(labels.shape) < weak_fraction, labels, 0).astype(np.uint8)
  return points, labels, weak


def make_example(scan_id: str, points, labels, weak, info) -> dict:
  row, col, depth = projection.project_np(points[:, :3], HEIGHT, WIDTH, info.fov_up,
                                          info.fov_down, info.fov_left, info.fov_right)
  image, winner = projection.range_image_np(points, row, col, depth, HEIGHT, WIDTH)
  has = winner >= 0
  take = lambda v: np.where(has, v[np.maximum(winner, 0)], 0).astype(np.uint8)
  return {"scan_id": scan_id, "range_image": image, "label": take(labels),
          "weak_label": take(weak), "points": points, "point_label": labels,
          "point_weak_label": weak, "point_row": row, "point_col": col}


def split_stats(examples: list[dict], num_classes: int) -> dict:
  valid = np.concatenate([e["range_image"][e["range_image"][..., 0] > 0] for e in examples])
  weak = np.concatenate([e["point_weak_label"] for e in examples])
  labels = np.concatenate([e["point_label"] for e in examples])
  return {"num_scans": len(examples), "num_points": int(labels.size),
          "num_weak_points": int((weak > 0).sum()),
          "weak_fraction": float((weak > 0).mean()),
          "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
          "weak_class_counts": np.bincount(weak, minlength=num_classes).tolist(),
          "mean": valid.mean(0).tolist(), "std": valid.std(0).tolist(),
          "num_nonfinite_dropped": 0}


def write_tiny_dataset(data_dir: str, num_train: int = 8, num_val: int = 4, seed: int = 0,
                       weak_fraction: float = 0.1, nan_train_scan: int | None = None,
                       stats_from: str | None = None) -> str:
  """Writes train/val splits (one shard each) and stats.json; returns data_dir.

  `nan_train_scan` puts NaN remissions into that training scan (a corrupt input);
  `stats_from` copies another tiny dataset's stats.json instead of computing it.
  """
  info = datasets.get_info("synthetic")
  rng = np.random.default_rng(seed)
  feats = features()
  os.makedirs(data_dir, exist_ok=True)
  split_infos, stats = [], {}
  for split, count in (("train", num_train), ("val", num_val)):
    examples = [make_example(f"{split}/{i:06d}", *make_scan(rng, info, weak_fraction), info)
                for i in range(count)]
    if split == "train" and nan_train_scan is not None:
      bad = examples[nan_train_scan]
      bad["points"][:, 3] = np.nan
      bad["range_image"][..., 4] = np.where(bad["range_image"][..., 0] > 0, np.nan, -1)
    path = os.path.join(data_dir, f"tiny-{split}.tfrecord-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
      for ex in examples:
        writer.write(feats.serialize_example(ex))
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=0))
    stats[split] = split_stats(examples, info.num_classes)
  tfds.folder_dataset.write_metadata(data_dir=data_dir, features=feats,
                                     split_infos=split_infos, check_data=False)
  payload = {"dataset": "synthetic", "height": HEIGHT, "width": WIDTH, "splits": stats}
  if stats_from is not None:
    with open(os.path.join(stats_from, "stats.json")) as f:
      payload = json.load(f)
  with open(os.path.join(data_dir, "stats.json"), "w") as f:
    json.dump(payload, f)
  return data_dir


def tiny_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  config = demo.get_config()
  config.data_dir = data_dir
  config.normalization = "stats"
  config.max_points = HEIGHT * WIDTH
  config.batch_size = config.eval_batch_size = 4
  config.num_train_steps = 12
  config.num_epochs = 6
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.eval_every_steps = 12
  config.train_crop_width = 0
  config.max_labeled_pixels = 256
  config.model.width = 0.125
  config.model.embed_dim = 16
  config.model.dropout_rate = 0.0
  config.optimizer.lr = 0.01
  config.optimizer.warmup_epochs = 0.5
  config.contrast.warmup_steps = 4
  config.contrast.num_anchors = 8
  config.contrast.sub_prototypes = 4
  config.shuffle_buffer = 8
  config.augment.mode = "points"  # The reference recipe's path: 3D augmentation, re-projection.
  for key, value in overrides.items():
    sub = config
    *path, last = key.split(".")
    for p in path:
      sub = sub[p]
    sub[last] = value
  return config
