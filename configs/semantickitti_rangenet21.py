"""SemanticKITTI, RangeNet-21 (DarkNet-21 encoder), 0.1% labels."""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "rangenet21"
  return config
