"""SemanticKITTI, SqueezeSegV3-21 with its multi-scale auxiliary heads, 0.1% labels."""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "squeezesegv3_21"
  return config
