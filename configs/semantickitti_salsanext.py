"""SemanticKITTI, SalsaNext, 0.1% labels: the COARSE3D reference recipe.

Dynamics and differences from the reference's effective recipe as in configs/default.py: bank
time constant 1000/1195 epoch; contrast warm-up 5% of the run (5 of 100 epochs) on the
reference's ImageNet encoder weights (`--config.model.init_from`), 25 epochs from scratch;
weight decay 1e-5 where the reference's trainer runs PyTorch's 0.01; no full-label input mask
(`oracle_ignore_mask`, which the reference's trainer applies); a moving bank (the reference's
never moves).
Run: python -m coarse3d_jax.main --config configs/semantickitti_salsanext.py --workdir WORK \
    --config.data_dir=DATA  (DATA from `python -m data_prep --dataset semantickitti ...`)
"""
from configs import default


def get_config():
  return default.get_config()
