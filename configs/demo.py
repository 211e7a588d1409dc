"""The built-in synthetic dataset at 0.1% labels, sized for a laptop CPU (`make demo`)."""
from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "synthetic"
  config.data_dir = "demo_data/tfds"
  config.normalization = "stats"
  config.max_points = 131_072
  config.batch_size = 4
  config.eval_batch_size = 4
  config.num_epochs = 8
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 100
  config.log_every_steps = 20
  config.train_crop_width = 512
  config.model.width = 0.25
  config.optimizer.lr = 0.004
  config.optimizer.warmup_epochs = 0.5
  config.contrast.warmup_epochs = 1.0
  config.eval.num_pictures = 2
  return config
