"""One process of the multi-process test: trains the tiny config over jax.distributed.

python -m tests.mp_worker --process_id I --num_processes N --port P --data_dir D --workdir W
  [--die_after STEP] [--out FILE.npz]
With --die_after the process SIGKILLs itself right after that step (a crash, no cleanup);
otherwise it trains to the end, restores the final checkpoint through orbax and saves its
addressable copy of every state leaf to --out.
"""
import argparse
import json
import os
import signal


def main():
  parser = argparse.ArgumentParser()
  for name in ("process_id", "num_processes", "port"):
    parser.add_argument(f"--{name}", type=int, required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--die_after", type=int, default=None)
  parser.add_argument("--out", default=None)
  parser.add_argument("--overrides", default="{}")
  args = parser.parse_args()
  from coarse3d_jax import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from coarse3d_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  from tests.tiny_data import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(args.data_dir, input_shards=2, **json.loads(args.overrides))
  results = train.train_and_evaluate(config, args.workdir, stop_after_step=args.die_after)
  if args.die_after is not None:
    os.kill(os.getpid(), signal.SIGKILL)
  ckpt = checkpoints.Checkpoints(args.workdir)
  state = ckpt.restore(train.abstract_state(train.make_setup(config)))
  ckpt.close()
  leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state)]
  np.savez(args.out, miou=results["miou"], *leaves)


if __name__ == "__main__":
  main()
