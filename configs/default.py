"""Base config: the COARSE3D reference recipe (SemanticKITTI, SalsaNext, 0.1% labels).

Every other config imports this one and changes only what differs.

Dynamics, in every config: the prototype bank's time constant is 1000/1195 epoch (the
reference's momentum 0.999 at its 1,195 steps per epoch), whatever the batch and the run
length (settings.bank_momentum); the contrast phase starts after 5% of the run (the reference's
5 of 100 epochs) when the encoder starts from ImageNet weights as the reference's does, after a
quarter of the run when it starts from scratch (its first pseudo-labels and anchors would
otherwise come from a barely trained network).

What differs from the reference's *effective* recipe (what its trainer runs, not its yaml):
- weight decay: its AdamW is built without one, so PyTorch's 0.01 applies, not the yaml's 1e-5
  kept here (`--config.optimizer.weight_decay=0.01` for the trainer's);
- initialization: its encoder starts from ImageNet weights (`model.init_from`, where to get
  them); without them this recipe trains from scratch, and its warm-up by the rule above is
  `--config.contrast.warmup_epochs=25`;
- full-label mask: its trainer multiplies the input by the *full* labels' ignore mask and draws
  pseudo-labels only inside it, in training and validation (`oracle_ignore_mask`, off here);
- its prototype bank never moves (`contrast.update_bank=false` for that).
Run (after `python -m data_prep --dataset semantickitti ... --out_dir DATA`):
  python -m coarse3d_jax.main --config configs/semantickitti_salsanext.py --workdir WORK \
      --config.data_dir=DATA --config.model.init_from=IMAGENET.pth
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "semantickitti"
  config.data_dir = ""  # Output directory of `python -m data_prep`.
  config.train_split = "train"
  config.eval_split = "val"
  # 'reference': the channel mean/std of the COARSE3D reference configs, which
  # pretrained reference checkpoints expect; 'stats': the data_prep statistics of train.
  config.normalization = "reference"
  config.max_points = 150_000  # Static per-scan point budget (pad length); KITTI max ~130k.

  config.seed = 0
  config.batch_size = 16  # Global: 4 per GPU x 4 GPUs in the reference.
  config.eval_batch_size = 16
  config.num_epochs = 100
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  config.log_every_steps = 50
  config.keep_checkpoints = 3
  config.train_crop_width = 0  # 0 = full width; else a random window of columns.
  config.shuffle_buffer = 64
  # Fixed data shards (0 = one per process); a global batch takes a slice of each, so the
  # batches are the same whatever the number of processes reading them.
  config.input_shards = 0
  # Per scan; static size of the labeled-pixel gather. 0 = auto: 4x the mean weakly labeled
  # points of a training scan (settings.labeled_pixel_cap).
  config.max_labeled_pixels = 0
  # NOT a weak-label setting: uses every pixel's *full*-annotation ignore status. True does what
  # the published trainer does in training and validation alike: the normalized input is zeroed
  # wherever the full label is 0, and pseudo-labels are drawn only where it is > 0. Off: the
  # weakly supervised setting. On: for comparing with the paper's numbers (docs/differences.md).
  config.oracle_ignore_mask = False

  config.model = ml_collections.ConfigDict()
  config.model.name = "salsanext"
  config.model.width = 1.0
  config.model.dtype = "float32"  # Compute dtype; params and losses stay float32.
  config.model.embed_dim = 256
  config.model.dropout_rate = 0.2
  # A reference PyTorch .pth to start from (needs the `torch` extra): a released COARSE3D model
  # or an encoder-only (ImageNet) checkpoint; matching variables replace the initial ones.
  # With num_epochs=0 the imported model is only evaluated, and saved as step 0 for predict.
  # The reference's SalsaNext ImageNet weights ("ImageNet pretrained model" in the README of
  # astra-vision/COARSE3D): https://drive.google.com/file/d/12eFcX5waDEQBOUOgs7L63XkXU3-2HpZG
  # (its trainer takes only the encoder modules from it: downCntx*, resBlock1-5).
  config.model.init_from = ""

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 0.01
  # The reference yaml's 1e-5. Its trainer builds AdamW without it, so PyTorch's default 0.01 is
  # what the published numbers were trained with: --config.optimizer.weight_decay=0.01 for that.
  config.optimizer.weight_decay = 1e-5
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8

  config.loss = ml_collections.ConfigDict()
  # 'focal' (class-weighted focal loss) or 'cross_entropy' (unweighted: the seed's "w/o focal
  # loss" row; the class-weighted cross-entropy is 'focal' with focal_gamma=0).
  config.loss.supervised = "focal"
  config.loss.focal_gamma = 2.0
  config.loss.lovasz_weight = 1.0  # 0 leaves the Lovasz term out (not computed).
  config.loss.aux_weight = 1.0  # SqueezeSegV3 multi-scale heads.

  config.contrast = ml_collections.ConfigDict()
  config.contrast.enabled = True
  config.contrast.weight = 0.1
  config.contrast.warmup_steps = -1  # >= 0 overrides warmup_epochs.
  config.contrast.warmup_epochs = 5.0  # 5% of the run, on ImageNet weights (the docstring).
  config.contrast.temperature = 0.07
  config.contrast.num_anchors = 512  # Per scan and class present.
  # 'entropy': anchors drawn with weight exp(-H^2) (COARSE3D); 'uniform': every pixel of the
  # class alike (the seed's "w/o anchor sampling" row).
  config.contrast.anchor_sampling = "entropy"
  config.contrast.sub_prototypes = 20
  # 'prototypes': the Sinkhorn/momentum sub-prototype bank (COARSE3D); 'pixels': in its place, a
  # per-class FIFO memory of the last pixel_memory_size labeled embeddings, started from random
  # unit vectors (the seed's "w/o prototype (5k pixel memory)" row). The bank array becomes
  # (C, pixel_memory_size, D): a different checkpoint structure, and Pix2Proto costs grow with it.
  config.contrast.memory = "prototypes"
  config.contrast.pixel_memory_size = 5000
  # False freezes the bank at its random initialization: what the published trainer runs.
  config.contrast.update_bank = True
  # The bank's time constant in epochs (the reference: momentum 0.999 per step at 1,195
  # SemanticKITTI steps per epoch); the per-step momentum follows from the run's steps per
  # epoch (settings.bank_momentum). momentum > 0 sets a raw per-step value instead.
  config.contrast.momentum_epochs = 1000 / 1195
  config.contrast.momentum = -1.0
  config.contrast.sinkhorn_iters = 3
  config.contrast.sinkhorn_epsilon = 0.05
  config.contrast.loss_variant = "seed"  # Or 'supcon' (the public reference's mean over positives).
  config.contrast.pseudo_labels = True
  # Training diagnostics (pseudo-label and anchor precision, bank update fraction and drift,
  # Pix2Proto loss, gradient ratio), logged as contrast/<name>: docs/usage.md.
  config.contrast.diagnostics = True

  config.augment = ml_collections.ConfigDict()
  config.augment.mode = "points"  # 'points' | 'range' | 'none'.
  config.augment.flip_prob = 0.5
  config.augment.translate_prob = 0.5
  config.augment.translate_x = 5.0
  config.augment.translate_y = 3.0
  config.augment.translate_z = (-1.0, 0.0)
  config.augment.rotate_prob = 0.5
  config.augment.rotate_degrees = 5.0  # Roll, pitch and yaw, each.

  config.eval = ml_collections.ConfigDict()
  config.eval.knn = False
  config.eval.num_pictures = 2
  return config
