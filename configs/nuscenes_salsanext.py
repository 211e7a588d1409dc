"""nuScenes-lidarseg (32-beam LIDAR_TOP at 64x2048 as in COARSE3D), SalsaNext, 0.1% labels."""
from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "nuscenes"
  config.max_points = 40_000
  return config
