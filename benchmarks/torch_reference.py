"""Times the public PyTorch COARSE3D (astra-vision/COARSE3D) training step, as published.

Nothing of the reference is copied here: it is imported at run time from a checkout whose root
is on PYTHONPATH (``pc_processor/`` plus ``tasks/weak_segmentation/`` beside it), at a commit
whose ``SalsaNextProto.forward`` uses its input (41de2207: the later clean-up commit 4abc9f4e
carries debug lines that replace the input by a random 1x5x64x2048 tensor, on which the
COARSE3D step then fails with a shape mismatch). Driven:

* ``pc_processor.models.SalsaNextProto``, built like ``tasks/weak_segmentation/main.py``
  ``Experiment._initModel`` (5 input channels, 20 classes, 20 sub-prototypes, momentum 0.999);
* ``tasks/weak_segmentation/trainer.py``: ``Trainer._initCriterion`` (``pc_processor.loss``
  ``FocalSoftmaxLoss``, ``Lovasz_softmax``, ``ContrastMEMLoss``) and
  ``Trainer.entropy_based_selection``, both called unbound on a stand-in ``self``;
* every hyper-parameter from ``tasks/weak_segmentation/config_semantic_kitti.yaml``.

One step re-states the body of ``Trainer.run(epoch, "Train")`` for one batch, in its order:
input normalization, forward, focal loss on weakly labeled pixels, Lovasz-softmax, then for
COARSE3D (an epoch >= ``contrast_warmup``) entropy-based pseudo-label selection, the contrastive
loss against ``model.prototypes`` (anchor sampling, queue expansion), backward, AdamW step.
Kinds: ``plain`` (epoch 0: no projection head), ``coarse3d`` (epoch ``contrast_warmup``,
exactly what the trainer runs), and the extra ``coarse3d_proto``: ``coarse3d`` with the model's
``use_prototype``/``proto_loss`` path on (``SalsaNextProto.prototype_learning``: per-class
``distributed_sinkhorn`` and momentum bank update), which the published trainer never enables.

Stubbed or left out, because they need a dataset, a GPU or a logger: the data loader (random
batch below, same recipe as ``common.random_batch``), ``Tensor.cuda`` on CPU (identity while
stepping: the reference calls it inside the losses), the dataset-derived ``learning_ignore``
(class 0 only), ``Trainer.run``'s scheduler step, its per-iteration 3-D IoU meter and loggers.
AdamW uses the config's weight decay 1e-5 (``Trainer._initOptimizer`` passes only ``lr``; same
cost).

``--device cuda`` runs the same steps on the GPU as the reference's trainer does there (real
``.cuda()``, ``cudnn.benchmark`` on as in its ``main.py``); every step ends in ``.item()``, so
its time includes the GPU's work. Modules that importing the reference needs but the step never
calls (``cv2``, ``tensorboardX``, ``PIL``, ``pyquaternion``, ``open3d``, ``matplotlib``, and
``timm``, whose ``trunc_normal_`` is then ``torch.nn.init.trunc_normal_``, the same
initializer) are replaced by stubs when they are not installed, as on the GPU machines; the
stubbed names are reported.
"""
import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import time
import types

_CONFIG = os.path.join("tasks", "weak_segmentation", "config_semantic_kitti.yaml")
_TRAINER = os.path.join("tasks", "weak_segmentation", "trainer.py")
_ref = None
# Imported by the reference's modules (or its trainer) but never called by the step.
_STUBBABLE = ("cv2", "tensorboardX", "PIL", "pyquaternion", "open3d", "matplotlib", "timm")
STUBBED: list[str] = []


class _Stub(types.ModuleType):
  """Stands in for a module the step never uses: any attribute is a function that fails."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)

    def missing(*args, **kwargs):
      raise RuntimeError(f"{self.__name__}.{name} is a stub: the module is not installed")
    return missing


def _stub_missing_modules(torch) -> None:
  """Puts a `_Stub` in sys.modules for each module of `_STUBBABLE` that cannot be imported."""
  for name in _STUBBABLE:
    try:
      importlib.import_module(name)
      continue
    except Exception:  # pylint: disable=broad-except
      pass
    STUBBED.append(name)
    sys.modules[name] = _Stub(name)
  if "timm" in STUBBED:
    for sub in ("timm.models", "timm.models.layers"):
      sys.modules[sub] = _Stub(sub)
    sys.modules["timm.models.layers"].trunc_normal_ = torch.nn.init.trunc_normal_
  if "PIL" in STUBBED:
    sys.modules["PIL.Image"] = _Stub("PIL.Image")


def _load():
  """(torch, F, pc_processor, trainer module, config dict); raises ImportError/OSError."""
  global _ref
  if _ref is None:
    import numpy as np  # pylint: disable=g-import-not-at-top,unused-import
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
    import yaml  # pylint: disable=g-import-not-at-top
    _stub_missing_modules(torch)
    import pc_processor  # pylint: disable=g-import-not-at-top
    import pc_processor.loss  # pylint: disable=g-import-not-at-top,unused-import
    import pc_processor.models  # pylint: disable=g-import-not-at-top,unused-import
    root = os.path.dirname(os.path.dirname(os.path.abspath(pc_processor.__file__)))
    with open(os.path.join(root, _CONFIG)) as f:
      config = yaml.safe_load(f)
    # trainer.py does `from option import Option`; option.py prepends "../../" to sys.path.
    saved_path, had_option = list(sys.path), "option" in sys.modules
    sys.path.insert(0, os.path.dirname(os.path.join(root, _TRAINER)))
    try:
      spec = importlib.util.spec_from_file_location("coarse3d_reference_trainer",
                                                    os.path.join(root, _TRAINER))
      trainer = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(trainer)
    finally:
      sys.path[:] = saved_path
      if not had_option:
        sys.modules.pop("option", None)
    _ref = (torch, F, pc_processor, trainer, config)
  return _ref


def available() -> str | None:
  """None when the reference can run here, else why not."""
  try:
    _load()
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return None


def _on_device(torch, device: str):
  """On CPU, `Tensor.cuda` is the identity (the reference calls it everywhere); else nothing."""
  return _cuda_is_identity(torch) if device == "cpu" else contextlib.nullcontext()


@contextlib.contextmanager
def _cuda_is_identity(torch):
  saved = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda = saved


def _random_batch(batch, height, width, num_classes, label_fraction):
  """common.random_batch's range image / full label / weak label (same rng call order)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  b, h, w = batch, height, width
  image = rng.normal(size=(b, h, w, 5)).astype(np.float32)
  valid = rng.random((b, h, w)) < 0.9
  image[..., 0] = np.where(valid, rng.uniform(1, 50, (b, h, w)), -1)
  label = np.where(valid, rng.integers(1, num_classes, (b, h, w)), 0).astype(np.uint8)
  weak = np.where(rng.random((b, h, w)) < label_fraction, label, 0).astype(np.uint8)
  return image.transpose(0, 3, 1, 2).copy(), label, weak


def build_step(kind: str, batch: int, height: int, width: int,
               label_fraction: float = 0.002, device: str = "cpu"):
  """A no-argument callable running one reference training step (and returning its loss).

  `device`: 'cpu' or a torch device such as 'cuda'.
  """
  if kind not in ("plain", "coarse3d", "coarse3d_proto"):
    raise ValueError(f"unknown kind {kind!r}")
  reason = available()
  if reason is not None:
    raise RuntimeError(f"PyTorch reference unavailable: {reason}")
  torch, F, pc_processor, trainer, cfg = _load()
  import numpy as np  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  if device != "cpu":
    torch.backends.cudnn.benchmark = True  # As the reference's main.py sets it.
  torch.manual_seed(cfg["seed"])
  np.random.seed(cfg["seed"])
  settings = types.SimpleNamespace(**{k: v for k, v in cfg.items() if k != "config"}, config=cfg)
  epoch = 0 if kind == "plain" else settings.contrast_warmup
  return_feat = epoch >= settings.contrast_warmup
  entropy_selection = settings.entropy_selection if return_feat else False
  proto = kind == "coarse3d_proto"

  with _on_device(torch, device):
    model = pc_processor.models.SalsaNextProto(
        in_channel=settings.input_channels, nclasses=settings.n_classes,
        sub_proto_size=settings.sub_proto_size, ignore_label=settings.ignore_cls,
        proto_mom=settings.proto_momentum, dataset=settings.dataset, use_prototype=proto)
    model.to(device)
    model.train()
    # Trainer._initDataloader's class weights (learning_ignore comes from the dataset: class 0).
    counts = np.asarray(list(cfg["cls_counts"].values()), dtype=np.float64)
    cls_weight = 1 / (counts / counts.sum() + 1e-3)
    cls_weight[0] = 0
    host = types.SimpleNamespace(settings=settings, cls_weight=cls_weight, recorder=None)
    criterion = trainer.Trainer._initCriterion(host)  # Moves the criteria with .cuda().
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    mean = torch.Tensor(cfg["sensor"]["img_mean"]).view(1, -1, 1, 1).to(device)
    std = torch.Tensor(cfg["sensor"]["img_stds"]).view(1, -1, 1, 1).to(device)
    image, label, weak = _random_batch(batch, height, width, settings.n_classes, label_fraction)
    raw = torch.from_numpy(image).to(device)
    train_label = torch.from_numpy(weak).long().to(device)
    eval_label = torch.from_numpy(label).long().to(device)

    def step():
      wss_mask, eval_mask = train_label.gt(0), eval_label.gt(0)
      input_feature = raw.clone()
      input_feature[:, 0:5] = ((input_feature[:, 0:5] - mean) / std *
                               eval_mask.unsqueeze(1).expand_as(input_feature[:, 0:5]))
      _, h, w = eval_label.shape
      extra = {"proto_loss": True} if proto else {}
      out = model(input_feature, label=train_label if return_feat else None,
                  eval_mask=wss_mask if return_feat else None, return_feat=return_feat, **extra)
      pred_2d = out["pred_2d"]
      if return_feat:
        feat_2d = F.interpolate(out["feat_2d"], (h, w), mode="bilinear", align_corners=True)
      total = torch.tensor(0.0, device=raw.device)
      total = total + settings.loss_w_ce_2d * criterion["focal_loss"](pred_2d, train_label,
                                                                       mask=wss_mask)
      total = total + settings.loss_w_lov_2d * criterion["lovasz"](pred_2d, train_label)
      if entropy_selection:
        with torch.no_grad():
          ratio = 0.5 * np.log(1 + (1 + epoch) / settings.n_epochs) / np.log(2)
          label_c, mask_c = trainer.Trainer.entropy_based_selection(
              host, output=pred_2d, wss_mask=wss_mask, eval_mask=eval_mask,
              train_label=train_label, select_ratio=ratio)
      if settings.loss_w_contrast > 0 and return_feat:
        queue = model.prototypes.detach().unsqueeze(0)
        total = total + settings.loss_w_contrast * criterion["contrast_loss"](
            feats=feat_2d, output=pred_2d, labels=label_c, keep_mask=mask_c, proto_queue=queue)
      total = total.mean()
      optimizer.zero_grad()
      total.backward()
      optimizer.step()
      return total.item()

  def step_on_device():
    with _on_device(torch, device):
      return step()
  return step_on_device


KINDS = ("plain", "coarse3d", "coarse3d_proto")


def serve(batch: int, height: int, width: int, label_fraction: float,
          device: str = "cpu") -> None:
  """Times one step of each kind per 'round' line on stdin, one JSON line of seconds each.

  The first line says {"ready": kinds, "torch": version, "device": name, "stubbed": modules}, or
  {"unavailable": why}.

  Run as a separate process by bench_train.py, taking turns with its own steps: in one process
  with JAX, a JAX step right after PyTorch steps ran ~30% slower (measured), which two
  processes avoid while still exposing both to the same machine drift.
  """
  why = available()
  if why is not None:
    print(json.dumps({"unavailable": why}), flush=True)
    return
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import rounds  # pylint: disable=g-import-not-at-top
  run = rounds.timed_round(
      {kind: build_step(kind, batch, height, width, label_fraction, device) for kind in KINDS})
  torch = _load()[0]
  name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
  print(json.dumps({"ready": list(KINDS), "torch": torch.__version__, "device": name,
                    "stubbed": STUBBED}), flush=True)
  for line in sys.stdin:
    if line.strip() != "round":
      break
    print(json.dumps(run()), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--serve", nargs=4, metavar=("BATCH", "HEIGHT", "WIDTH", "LABEL_FRACTION"),
                      help="time steps per 'round' line on stdin (see serve)")
  parser.add_argument("--device", default="cpu", help="cpu, or a torch device such as cuda")
  return parser.parse_args(argv)


if __name__ == "__main__":
  cli = parse_args()
  if cli.serve:
    serve(int(cli.serve[0]), int(cli.serve[1]), int(cli.serve[2]), float(cli.serve[3]),
          cli.device)
    sys.exit(0)
  why = available()
  if why is not None:
    print(f"PyTorch reference unavailable: {why}")
    sys.exit(0)
  for k in KINDS:
    smoke = build_step(k, 1, 16, 128, label_fraction=0.02, device=cli.device)
    start = time.perf_counter()
    print(k, "loss %.4f" % smoke(), "%.3f s" % (time.perf_counter() - start))
