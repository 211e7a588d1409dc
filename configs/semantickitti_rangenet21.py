"""SemanticKITTI, RangeNet-21 (DarkNet-21 encoder), 0.1% labels.

Dynamics and differences from the reference's effective recipe as in configs/default.py: bank
time constant 1000/1195 epoch; the reference publishes ImageNet weights for SalsaNext only, so
this backbone trains from scratch and its contrast warm-up is a quarter of the run (25 of 100
epochs) by the rule there; weight decay 1e-5 where the reference's trainer runs PyTorch's
0.01; no full-label input mask (`oracle_ignore_mask`, which the reference's trainer applies); a
moving bank (the reference's never moves).
Its projection head reads only the encoder's detached skips (as the reference's), so the
contrastive term trains the head and never the encoder: contrast/grad_ratio is 0.
Run: python -m coarse3d_jax.main --config configs/semantickitti_rangenet21.py --workdir WORK \
    --config.data_dir=DATA  (DATA from `python -m data_prep --dataset semantickitti ...`)
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "rangenet21"
  config.contrast.warmup_epochs = 25.0  # From scratch: a quarter of the run.
  return config
