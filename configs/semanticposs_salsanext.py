"""SemanticPOSS (40x1800, 13 classes + ignore), SalsaNext, 0.1% labels."""
from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "semanticposs"
  config.max_points = 80_000
  return config
