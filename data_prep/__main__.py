"""python -m data_prep: raw LiDAR scans -> TFDS-loadable TFRecord range images with weak labels.

    python -m data_prep --dataset {semantickitti,semanticposs,nuscenes,synthetic} \\
        --raw-dir RAW --out-dir OUT --label-ratio 0.001 \\
        [--split NAME=SEQ[,SEQ...]]... [--protocol {voxel,point}] [--voxel-size 0.06] \\
        [--seed 0] [--workers N] [--shard-size 64]

Without --split: the official splits. A split named 'test' carries no labels. With
--dataset synthetic and no sequences under RAW yet, the synthetic scenes are generated first.
"""
import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

from coarse3d_jax import datasets
from data_prep import convert
from data_prep import readers
from data_prep import weak_labels
from data_prep.errors import DataError

_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _split_arg(text: str) -> tuple[str, list[str]]:
  name, sep, seqs = text.partition("=")
  sequences = [s for s in seqs.split(",") if s]
  if not sep or not _SPLIT_NAME.fullmatch(name) or not sequences:
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected NAME=SEQ[,SEQ...] with a lower-case NAME, e.g. train=00,01")
  return name, sequences


def _ratio(text: str) -> float:
  value = float(text)
  if not 0.0 < value <= 1.0:
    raise argparse.ArgumentTypeError(f"{text}: the label ratio must lie in (0, 1]")
  return value


def _positive(kind):
  def parse(text: str):
    value = kind(text)
    if value <= 0:
      raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value
  return parse


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m data_prep", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=datasets.NAMES)
  parser.add_argument("--raw-dir", required=True, type=pathlib.Path,
                      help="dataset root (with sequences/, or the nuScenes v1.0-* tables)")
  parser.add_argument("--out-dir", required=True, type=pathlib.Path,
                      help="output directory, loadable with tfds.builder_from_directory")
  parser.add_argument("--label-ratio", required=True, type=_ratio,
                      help="fraction of points to label, e.g. 0.001 for 0.1%%; 1 = all labels")
  parser.add_argument("--split", action="append", type=_split_arg, default=[],
                      metavar="NAME=SEQ[,SEQ...]",
                      help="a split and its sequences (nuScenes: scene names); repeatable")
  parser.add_argument("--protocol", choices=weak_labels.PROTOCOLS, default="voxel")
  parser.add_argument("--voxel-size", type=_positive(float), default=0.06, help="metres")
  parser.add_argument("--seed", type=int, default=0, help="seed of the weak-label draw")
  parser.add_argument("--workers", type=_positive(int), default=1)
  parser.add_argument("--shard-size", type=_positive(int), default=64, help="scans per shard")
  return parser


def _generate_synthetic(raw_dir: pathlib.Path, split_sequences, workers: int, log) -> None:
  """Writes the synthetic SemanticKITTI-layout tree when RAW holds no sequence yet."""
  root = readers.sequences_root(raw_dir)
  if root.is_dir() and any((p / "velodyne").is_dir() for p in root.iterdir()):
    return
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  sequences = sorted({s for seqs in (split_sequences or datasets.get_info(
      "synthetic").splits).values() for s in seqs})
  print(f"data_prep: generating synthetic sequences {', '.join(sequences)} in {raw_dir}",
        file=log)
  synthetic.generate_tree(raw_dir, sequences=tuple(sequences), workers=workers)


def main(argv: Sequence[str] | None = None, log=None) -> int:
  """Runs the CLI; returns the exit status (0 ok, 1 bad input or output, 2 bad arguments)."""
  log = log or sys.stderr
  args = build_parser().parse_args(argv)
  names = [name for name, _ in args.split]
  if len(set(names)) != len(names):
    print(f"error: --split names repeat: {', '.join(names)}", file=log)
    return 2
  split_sequences = dict(args.split) or None
  settings = convert.Settings(dataset=args.dataset, label_ratio=args.label_ratio,
                              protocol=args.protocol, voxel_size=args.voxel_size, seed=args.seed)
  try:
    if args.dataset == "synthetic":
      _generate_synthetic(args.raw_dir, split_sequences, args.workers, log)
    convert.run(settings, args.raw_dir, args.out_dir, split_sequences, workers=args.workers,
                shard_size=args.shard_size, log=log)
  except DataError as e:
    print(f"error: {e}", file=log)
    return 1
  except KeyboardInterrupt:
    print("interrupted: finished shards are kept; rerun the same command to resume", file=log)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
