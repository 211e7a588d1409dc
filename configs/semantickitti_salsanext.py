"""SemanticKITTI, SalsaNext, 0.1% labels: the COARSE3D reference recipe."""
from configs import default


def get_config():
  return default.get_config()
