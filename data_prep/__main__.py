"""python -m data_prep: raw LiDAR scans -> TFDS-loadable TFRecord range images with weak labels.

    python -m data_prep --dataset {semantickitti,semanticposs,nuscenes,synthetic,custom} \\
        --raw_dir RAW --out_dir OUT (--label_ratio 0.001 | --weak_labels DIR) \\
        [--split NAME=SEQ[,SEQ...]]... [--protocol {voxel,point}] [--voxel_size 0.06] \\
        [--seed 0] [--workers N] [--shard_size 64] [--dataset_config my_sensor.yaml] \\
        [--weak_labels_format {auto,label,npy}] [--weak_labels_root ROOT] \\
        [--write_weak_labels DIR]

Without --split: the official splits. A split named 'test' carries no labels. With
--dataset synthetic and no sequences under RAW yet, the synthetic scenes are generated first.
--dataset custom reads the dataset's classes, label maps and sensor from --dataset_config.
Weak labels are drawn (--label_ratio) or read from sequences/NN/DIR/ files (--weak_labels);
--write_weak_labels writes them out as such files. docs/bring_your_own.md has the details.
"""
from collections.abc import Sequence
import pathlib
import re
import sys

from absl import flags

from coarse3d_jax import startup
from coarse3d_jax.data import dataset_config
from coarse3d_jax.data import datasets
from coarse3d_jax.data import readers
from coarse3d_jax.data import weak_label_files
from coarse3d_jax.data import weak_labels
from coarse3d_jax.data.errors import DataError
from data_prep import convert

_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_DRAW_FLAGS = ("label_ratio", "protocol", "voxel_size", "seed")
# Folders of the raw layout that --write_weak_labels must never overwrite.
_RAW_FOLDERS = ("velodyne", "labels", "tag")


def _split_arg(text: str) -> tuple[str, list[str]]:
  name, sep, seqs = text.partition("=")
  sequences = [s for s in seqs.split(",") if s]
  if not sep or not _SPLIT_NAME.fullmatch(name) or not sequences:
    raise startup.UsageError(
        f"--split {text!r}: expected NAME=SEQ[,SEQ...] with a lower-case NAME, e.g. train=00,01")
  return name, sequences


def define_flags(fv: flags.FlagValues, argv) -> None:
  del argv
  flags.DEFINE_enum("dataset", None, [*datasets.NAMES, "custom"],
                    "Dataset of the raw scans (custom: described by --dataset_config).",
                    flag_values=fv)
  flags.DEFINE_string("dataset_config", None, "With --dataset custom: the YAML file that "
                      "describes the dataset (classes, label maps, sensor).", flag_values=fv)
  flags.DEFINE_string("raw_dir", None,
                      "Dataset root (with sequences/, or the nuScenes v1.0-* tables).",
                      flag_values=fv)
  flags.DEFINE_string("out_dir", None,
                      "Output directory, loadable with tfds.builder_from_directory.",
                      flag_values=fv)
  flags.DEFINE_float("label_ratio", None,
                     "Fraction of points to label, e.g. 0.001 for 0.1%; 1 = all labels. "
                     "Required unless --weak_labels.",
                     lower_bound=0.0, upper_bound=1.0, flag_values=fv)
  flags.DEFINE_string("weak_labels", None,
                      "Read the weak labels from sequences/NN/DIR/NNNNNN.label (or .npy) "
                      "instead of drawing them, e.g. scribbles.", flag_values=fv)
  flags.DEFINE_enum("weak_labels_format", "auto", list(weak_label_files.FORMATS),
                    "Weak-label files: label (uint32 raw ids), npy (the COARSE3D reference's "
                    "learning ids) or auto (.label, else .npy).", flag_values=fv)
  flags.DEFINE_string("weak_labels_root", None, "Dataset root whose sequences/NN/DIR/ folders "
                      "hold the weak-label files, read or written (default: --raw_dir).",
                      flag_values=fv)
  flags.DEFINE_string("write_weak_labels", None,
                      "Also write each scan's weak labels to sequences/NN/DIR/NNNNNN.label.",
                      flag_values=fv)
  flags.DEFINE_multi_string("split", [], "NAME=SEQ[,SEQ...]: a split and its sequences "
                            "(nuScenes: scene names); repeatable. Default: the official splits.",
                            flag_values=fv)
  flags.DEFINE_enum("protocol", "voxel", list(weak_labels.PROTOCOLS),
                    "Weak-label protocol: voxel (propagated to the voxel) or point.",
                    flag_values=fv)
  flags.DEFINE_float("voxel_size", 0.06, "Voxel size of the voxel protocol, metres.",
                     lower_bound=1e-6, flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of the weak-label draw.", flag_values=fv)
  flags.DEFINE_integer("workers", 1, "Worker processes.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("shard_size", 64, "Scans per shard.", lower_bound=1, flag_values=fv)
  flags.mark_flags_as_required(["dataset", "raw_dir", "out_dir"], flag_values=fv)
  flags.register_validator("label_ratio", lambda v: v is None or v > 0,
                           "the label ratio must lie in (0, 1]", flag_values=fv)


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


def _check_dataset_flags(args: flags.FlagValues) -> None:
  if args.dataset == "custom" and not args.dataset_config:
    raise startup.UsageError("--dataset custom needs --dataset_config FILE (the YAML file that "
                             "describes the dataset)")
  if args.dataset != "custom" and args.dataset_config:
    raise startup.UsageError(f"--dataset_config describes a custom dataset: use it with "
                             f"--dataset custom, not --dataset {args.dataset}")


def _check_weak_label_flags(args: flags.FlagValues) -> None:
  """Weak labels are either drawn (--label_ratio ...) or read (--weak_labels), not both."""
  drawing = [f"--{name}" for name in _DRAW_FLAGS if args[name].present]
  if args.weak_labels and drawing:
    raise startup.UsageError(f"{', '.join(drawing)} and --weak_labels exclude each other: "
                             "with --weak_labels the weak labels are read from files, not drawn")
  if not args.weak_labels and args.label_ratio is None:
    raise startup.UsageError("--label_ratio is required (the fraction of points to label), "
                             "unless --weak_labels DIR reads the weak labels from files")
  if (args.weak_labels or args.write_weak_labels) and args.dataset == "nuscenes":
    raise startup.UsageError("weak-label files live in sequences/NN/DIR/: SemanticKITTI-layout "
                             "datasets only, not nuscenes")
  if args.write_weak_labels and args.write_weak_labels in _RAW_FOLDERS + (args.weak_labels,):
    raise startup.UsageError(f"--write_weak_labels {args.write_weak_labels}: that folder holds "
                             "input data; write the weak labels to another folder")


def _settings(args: flags.FlagValues) -> convert.Settings:
  info = dataset_config.load(args.dataset_config) if args.dataset == "custom" else None
  weak_files = {"weak_labels": args.weak_labels, "weak_labels_format": args.weak_labels_format,
                "weak_labels_root": args.weak_labels_root,
                "write_weak_labels": args.write_weak_labels}
  drawn = {name: None if args.weak_labels else args[name].value for name in _DRAW_FLAGS}
  return convert.Settings(dataset=info.name if info else args.dataset, info=info, **drawn,
                          **weak_files)


def run(args: flags.FlagValues, log) -> int:
  splits = [_split_arg(text) for text in args.split]
  names = [name for name, _ in splits]
  if len(set(names)) != len(names):
    raise startup.UsageError(f"--split names repeat: {', '.join(names)}")
  split_sequences = dict(splits) or None
  _check_dataset_flags(args)
  _check_weak_label_flags(args)
  settings = _settings(args)
  raw_dir, out_dir = pathlib.Path(args.raw_dir), pathlib.Path(args.out_dir)
  try:
    if args.dataset == "synthetic":
      _generate_synthetic(raw_dir, split_sequences, args.workers, log)
    convert.run(settings, raw_dir, out_dir, split_sequences, workers=args.workers,
                shard_size=args.shard_size, log=log)
  except KeyboardInterrupt:
    print("interrupted: finished shards are kept; rerun the same command to resume", file=log)
    return startup.EXIT_INTERRUPTED
  return startup.EXIT_OK


def main(argv: Sequence[str] | None = None, log=None) -> int:
  """Runs the CLI on argv (without the program name; default sys.argv[1:]); returns the exit
  status (0 ok, 1 bad input or output, 2 bad arguments)."""
  argv = sys.argv[1:] if argv is None else argv
  log = log or sys.stderr
  program = startup.Program("data_prep", __doc__, define_flags,
                            lambda args: run(args, log), (DataError,), log=log)
  return startup.run(program, ["data_prep", *argv])


if __name__ == "__main__":
  sys.exit(main())
