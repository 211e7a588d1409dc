"""Base config: the COARSE3D reference recipe (SemanticKITTI, SalsaNext, 0.1% labels).

Every other config imports this one and changes only what differs.
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

  config.model = ml_collections.ConfigDict()
  config.model.name = "salsanext"
  config.model.width = 1.0
  config.model.dtype = "float32"  # Compute dtype; params and losses stay float32.
  config.model.embed_dim = 256
  config.model.dropout_rate = 0.2
  # A reference PyTorch .pth to start from (needs the `torch` extra): a released COARSE3D model
  # or an encoder-only (ImageNet) checkpoint; matching variables replace the initial ones.
  # With num_epochs=0 the imported model is only evaluated, and saved as step 0 for predict.
  config.model.init_from = ""

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 0.01
  config.optimizer.weight_decay = 1e-5
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8

  config.loss = ml_collections.ConfigDict()
  config.loss.focal_gamma = 2.0
  config.loss.lovasz_weight = 1.0
  config.loss.aux_weight = 1.0  # SqueezeSegV3 multi-scale heads.

  config.contrast = ml_collections.ConfigDict()
  config.contrast.enabled = True
  config.contrast.weight = 0.1
  config.contrast.warmup_steps = -1  # >= 0 overrides warmup_epochs.
  config.contrast.warmup_epochs = 5.0
  config.contrast.temperature = 0.07
  config.contrast.num_anchors = 512  # Per scan and class present.
  config.contrast.sub_prototypes = 20
  # The bank's time constant in epochs (the reference: momentum 0.999 per step at 1,195
  # SemanticKITTI steps per epoch); the per-step momentum follows from the run's steps per
  # epoch (settings.bank_momentum). momentum > 0 sets a raw per-step value instead.
  config.contrast.momentum_epochs = 1000 / 1195
  config.contrast.momentum = -1.0
  config.contrast.sinkhorn_iters = 3
  config.contrast.sinkhorn_epsilon = 0.05
  config.contrast.loss_variant = "seed"  # Or 'supcon' (the public reference's mean over positives).
  config.contrast.pseudo_labels = True

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
