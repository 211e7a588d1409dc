"""PyTorch -> Flax weight conversion.

The reference-shaped state dicts are built here from the layer facts of the reference networks
(key names and OIHW shapes written independently of the Flax code), so the converter is
checked without torch. Numerical equivalence of the mapped layers is checked against numpy
float64 implementations of the PyTorch operators; a last test compares with torch itself where
it is installed.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse3d_jax.models import convert_torch
from coarse3d_jax.models import layers
from coarse3d_jax.models import rangenet
from coarse3d_jax.models import squeezeseg

NUM_CLASSES = 20
SEG_PARAMS = {"salsanext": 6_711_572, "rangenet21": 24_712_980, "squeezesegv3_21": 9_247_140}


class _StateDict:
  """Collects PyTorch parameter names and shapes the way nn.Module.state_dict() lists them."""

  def __init__(self):
    self.shapes: dict[str, tuple[int, ...]] = {}

  def conv(self, key, out, inp, kh, kw=None, bias=True):
    self.shapes[f"{key}.weight"] = (out, inp, kh, kw or kh)
    if bias:
      self.shapes[f"{key}.bias"] = (out,)

  def upconv(self, key, inp, out):
    self.shapes[f"{key}.weight"] = (inp, out, 1, 4)
    self.shapes[f"{key}.bias"] = (out,)

  def bn(self, key, n):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      self.shapes[f"{key}.{leaf}"] = (n,)
    self.shapes[f"{key}.num_batches_tracked"] = ()

  def coarse3d_extras(self, proj_in, dim=256):
    self.conv("projector.proj.0", proj_in, proj_in, 1)
    self.bn("projector.proj.1", proj_in)
    self.conv("projector.proj.3", dim, proj_in, 1)
    self.shapes["prototypes"] = (NUM_CLASSES, 20, dim)
    for norm, n in (("feat_norm", dim), ("mask_norm", NUM_CLASSES)):
      self.shapes[f"{norm}.weight"] = (n,)
      self.shapes[f"{norm}.bias"] = (n,)


def salsanext_state_dict() -> _StateDict:
  sd, b = _StateDict(), 32
  for key, inp in (("downCntx", 5), ("downCntx2", b), ("downCntx3", b)):
    sd.conv(f"{key}.conv1", b, inp, 1)
    sd.conv(f"{key}.conv2", b, b, 3)
    sd.bn(f"{key}.bn1", b)
    sd.conv(f"{key}.conv3", b, b, 3)
    sd.bn(f"{key}.bn2", b)
  for i, (inp, out) in enumerate([(b, 2 * b), (2 * b, 4 * b), (4 * b, 8 * b), (8 * b, 8 * b),
                                  (8 * b, 8 * b)]):
    key = f"resBlock{i + 1}"
    sd.conv(f"{key}.conv1", out, inp, 1)
    sd.conv(f"{key}.conv2", out, inp, 3)
    sd.conv(f"{key}.conv3", out, out, 3)
    sd.conv(f"{key}.conv4", out, out, 2)
    sd.conv(f"{key}.conv5", out, 3 * out, 1)
    for j in range(1, 5):
      sd.bn(f"{key}.bn{j}", out)
  for i, (inp, out) in enumerate([(8 * b, 4 * b), (4 * b, 4 * b), (4 * b, 2 * b), (2 * b, b)]):
    key = f"upBlock{i + 1}"
    sd.conv(f"{key}.conv1", out, inp // 4 + 2 * out, 3)
    sd.conv(f"{key}.conv2", out, out, 3)
    sd.conv(f"{key}.conv3", out, out, 2)
    sd.conv(f"{key}.conv4", out, 3 * out, 1)
    for j in range(1, 5):
      sd.bn(f"{key}.bn{j}", out)
  sd.conv("cls_head", NUM_CLASSES, b, 1)
  sd.coarse3d_extras(22 * b)
  return sd


def _basic_block(sd, key, inplanes, planes):
  sd.conv(f"{key}.conv1", planes[0], inplanes, 1, bias=False)
  sd.bn(f"{key}.bn1", planes[0])
  sd.conv(f"{key}.conv2", planes[1], planes[0], 3, bias=False)
  sd.bn(f"{key}.bn2", planes[1])


def _decoder(sd, planes, upsample):
  for i, ((inp, out), up) in enumerate(zip(planes, upsample)):
    key = f"decoder.dec{5 - i}"
    if up:
      sd.upconv(f"{key}.upconv", inp, out)
    else:
      sd.conv(f"{key}.conv", out, inp, 3)
    sd.bn(f"{key}.bn", out)
    _basic_block(sd, f"{key}.residual", out, (inp, out))


def rangenet_state_dict() -> _StateDict:
  sd = _StateDict()
  sd.conv("backbone.conv1", 32, 5, 3, bias=False)
  sd.bn("backbone.bn1", 32)
  chans = [32, 64, 128, 256, 512, 1024]
  for i, blocks in enumerate([1, 1, 2, 2, 1]):
    key, planes = f"backbone.enc{i + 1}", (chans[i], chans[i + 1])
    sd.conv(f"{key}.conv", planes[1], planes[0], 3, bias=False)
    sd.bn(f"{key}.bn", planes[1])
    for j in range(blocks):
      _basic_block(sd, f"{key}.residual_{j}", planes[1], planes)
  _decoder(sd, [(1024, 512), (512, 256), (256, 128), (128, 64), (64, 32)], [True] * 5)
  sd.conv("head.1", NUM_CLASSES, 32, 3)
  sd.coarse3d_extras(480)
  return sd


def _sac_block(sd: _StateDict, prefix: str, c: int) -> None:
  """A reference SAC block with c channels: attention conv on xyz, then the position MLP."""
  sd.conv(f"{prefix}.attention_x.0", 9 * c, 3, 7)
  sd.bn(f"{prefix}.attention_x.1", 9 * c)
  sd.conv(f"{prefix}.position_mlp_2.0", c, 9 * c, 1)
  sd.bn(f"{prefix}.position_mlp_2.1", c)
  sd.conv(f"{prefix}.position_mlp_2.3", c, c, 3)
  sd.bn(f"{prefix}.position_mlp_2.4", c)


def squeezeseg_state_dict() -> _StateDict:
  sd = _StateDict()
  sd.conv("backbone.conv1", 32, 5, 3, bias=False)
  sd.bn("backbone.bn1", 32)
  stages = [(32, 64, 1, True), (64, 128, 1, True), (128, 256, 2, True), (256, 256, 2, False),
            (256, 256, 1, False)]
  for i, (c, out, blocks, down) in enumerate(stages):
    key = f"backbone.enc{i + 1}"
    for j in range(blocks):
      _sac_block(sd, f"{key}.residual_{j}", c)
    if down:
      sd.conv(f"{key}.conv", out, c, 3, bias=False)
      sd.bn(f"{key}.bn", out)
  _decoder(sd, [(256, 256), (256, 256), (256, 128), (128, 64), (64, 32)],
           [False, False, True, True, True])
  for i, (c, k) in enumerate([(256, 1), (256, 1), (128, 1), (64, 1), (32, 3)]):
    sd.conv(f"head{i + 1}.1", NUM_CLASSES, c, k)
  sd.coarse3d_extras(480)
  return sd


BUILDERS = {"salsanext": salsanext_state_dict, "rangenet21": rangenet_state_dict,
            "squeezesegv3_21": squeezeseg_state_dict}


def _random_state_dict(name: str, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in BUILDERS[name]().shapes.items():
    if key.endswith("num_batches_tracked"):
      out[key] = np.array(7, np.int64)
    else:
      out[key] = rng.normal(size=shape).astype(np.float32)
  return out


def _is_seg_param(key: str) -> bool:
  extras = ("projector.", "prototypes", "feat_norm.", "mask_norm.")
  stats = ("running_mean", "running_var", "num_batches_tracked")
  return not key.startswith(extras) and not key.endswith(stats)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_reference_state_dict_has_reference_param_count(name):
  shapes = BUILDERS[name]().shapes
  seg = sum(int(np.prod(s)) for k, s in shapes.items() if _is_seg_param(k))
  assert seg == SEG_PARAMS[name]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def converted(request):
  name = request.param
  sd = _random_state_dict(name)
  return name, sd, convert_torch.convert_state_dict(name, sd)


def test_converted_tree_matches_model_variables(converted):
  name, _, variables = converted
  expected = convert_torch.expected_variables(name, num_classes=NUM_CLASSES)
  got_shapes = jax.tree_util.tree_map(lambda a: a.shape, variables)
  want_shapes = jax.tree_util.tree_map(lambda a: a.shape, expected)
  assert got_shapes == want_shapes


def test_conversion_is_a_permutation_of_the_tensors(converted):
  """Every kept tensor lands somewhere exactly once: value sums and sums of squares agree."""
  _, sd, variables = converted
  kept = [v for k, v in sd.items() if not convert_torch._IGNORED.search(k)]
  leaves = jax.tree_util.tree_leaves(variables)
  assert sum(v.size for v in kept) == sum(a.size for a in leaves)
  np.testing.assert_allclose(sum(float(np.sum(v, dtype=np.float64)) for v in kept),
                             sum(float(np.sum(a, dtype=np.float64)) for a in leaves), rtol=1e-9)
  np.testing.assert_allclose(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in kept),
                             sum(float(np.sum(np.square(a, dtype=np.float64))) for a in leaves),
                             rtol=1e-9)


PLACEMENTS = {
    "salsanext": [
        ("resBlock3.conv4.weight", ("params", "resBlock3", "conv4", "kernel"), "oihw"),
        ("upBlock2.bn3.running_var", ("batch_stats", "upBlock2", "bn3", "var"), "same"),
        ("cls_head.bias", ("params", "cls_head", "bias"), "same"),
        ("projector.proj.1.weight", ("params", "proj_head", "bn", "scale"), "same"),
        ("projector.proj.3.weight", ("params", "proj_head", "conv2", "kernel"), "oihw"),
        ("feat_norm.bias", ("params", "embed_norm", "bias"), "same"),
    ],
    "rangenet21": [
        ("backbone.enc4.residual_1.conv2.weight",
         ("params", "backbone", "enc4", "residual_1", "conv2", "kernel"), "oihw"),
        ("decoder.dec3.upconv.weight", ("params", "decoder", "dec3", "upconv", "kernel"),
         "transpose"),
        ("decoder.dec1.bn.running_mean", ("batch_stats", "decoder", "dec1", "bn", "mean"), "same"),
        ("head.1.weight", ("params", "head", "kernel"), "oihw"),
    ],
    "squeezesegv3_21": [
        ("backbone.enc3.residual_1.attention_x.0.weight",
         ("params", "backbone", "enc3", "residual_1", "attention_conv", "kernel"), "sac_out"),
        ("backbone.enc1.residual_0.position_mlp_2.0.weight",
         ("params", "backbone", "enc1", "residual_0", "mlp_conv1", "kernel"), "sac_in"),
        ("backbone.enc1.residual_0.attention_x.1.running_mean",
         ("batch_stats", "backbone", "enc1", "residual_0", "attention_bn", "mean"), "sac_vec"),
        ("backbone.enc2.residual_0.position_mlp_2.4.running_var",
         ("batch_stats", "backbone", "enc2", "residual_0", "mlp_bn2", "var"), "same"),
        ("decoder.dec5.conv.bias", ("params", "decoder", "dec5", "conv", "bias"), "same"),
        ("head4.1.weight", ("params", "head4", "kernel"), "oihw"),
    ],
}


def test_known_tensors_land_in_place(converted):
  name, sd, variables = converted
  for key, path, kind in PLACEMENTS[name]:
    got = variables
    for k in path:
      got = got[k]
    want = sd[key]
    if kind.startswith("sac"):
      # Flax channel k * C + c holds PyTorch's unfold channel c * 9 + k.
      axis = 1 if kind == "sac_in" else 0
      c = want.shape[axis] // 9
      order = [ci * 9 + k for k in range(9) for ci in range(c)]
      want = np.take(want, order, axis=axis)
    if kind in ("oihw", "sac_out", "sac_in"):
      want = np.transpose(want, (2, 3, 1, 0))
    elif kind == "transpose":
      want = np.transpose(want, (2, 3, 0, 1))
    np.testing.assert_array_equal(got, want, err_msg=key)


def test_ddp_prefix_and_ignored_keys():
  sd = {"module." + k: v for k, v in _random_state_dict("squeezesegv3_21", 1).items()}
  variables = convert_torch.convert_state_dict("squeezesegv3_21", sd)
  np.testing.assert_array_equal(variables["params"]["head5"]["bias"], sd["module.head5.1.bias"])


def test_errors_name_the_key():
  sd = _random_state_dict("rangenet21")
  bad = dict(sd)
  bad["backbone.enc1.conv.weight"] = np.zeros((64, 32, 3, 5), np.float32)
  with pytest.raises(convert_torch.ConversionError, match="backbone.enc1.conv.weight"):
    convert_torch.convert_state_dict("rangenet21", bad)
  missing = {k: v for k, v in sd.items() if not k.startswith("decoder.dec2.")}
  with pytest.raises(convert_torch.ConversionError, match="lacks"):
    convert_torch.convert_state_dict("rangenet21", missing)
  with pytest.raises(convert_torch.ConversionError, match="no Flax counterpart"):
    convert_torch.convert_state_dict("rangenet21",
                                     {**sd, "backbone.extra.weight": sd["head.1.bias"]})
  with pytest.raises(convert_torch.ConversionError, match="unknown model"):
    convert_torch.convert_state_dict("resnet", sd)


def test_encoder_only_checkpoint_merges_into_init():
  """An ImageNet-style checkpoint (encoder + 'fc') converts non-strictly and merges."""
  full = _random_state_dict("salsanext", 2)
  enc = {k: v for k, v in full.items() if k.startswith(("downCntx", "resBlock"))}
  enc["fc.linear.weight"] = np.zeros((1000, 256), np.float32)
  partial = convert_torch.convert_state_dict("salsanext", enc, num_classes=NUM_CLASSES,
                                             strict=False)
  assert set(partial["params"]) == {f"downCntx{s}" for s in ("", "2", "3")} | {
      f"resBlock{i}" for i in range(1, 6)}
  base = convert_torch.convert_state_dict("salsanext", _random_state_dict("salsanext", 3))
  merged = convert_torch.merge_variables(base, partial)
  np.testing.assert_array_equal(merged["params"]["resBlock2"]["conv1"]["bias"],
                                full["resBlock2.conv1.bias"])
  np.testing.assert_array_equal(merged["params"]["upBlock1"]["conv1"]["bias"],
                                base["params"]["upBlock1"]["conv1"]["bias"])


def test_width_multiplier_shapes():
  sd = _random_state_dict("rangenet21")
  with pytest.raises(convert_torch.ConversionError, match="width=0.5"):
    convert_torch.convert_state_dict("rangenet21", sd, width=0.5)


# ---- numerical equivalence of the mapped operators (numpy float64 = PyTorch semantics) ----

def _torch_conv2d(x, w, b, stride=(1, 1), padding=(0, 0), dilation=1):
  """NCHW cross-correlation with zero padding, as torch.nn.functional.conv2d."""
  n, _, h, wd = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
  oh = (h + 2 * padding[0] - dilation * (kh - 1) - 1) // stride[0] + 1
  ow = (wd + 2 * padding[1] - dilation * (kw - 1) - 1) // stride[1] + 1
  out = np.zeros((n, o, oh, ow))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, :, i * dilation: i * dilation + stride[0] * (oh - 1) + 1: stride[0],
                 j * dilation: j * dilation + stride[1] * (ow - 1) + 1: stride[1]]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out + (0 if b is None else b[None, :, None, None])


def _torch_conv_transpose_1x4(x, w, b):
  """conv_transpose2d(stride=(1, 2), padding=(0, 1)) by its scatter definition."""
  n, _, h, wd = x.shape
  out = np.zeros((n, w.shape[1], h, 2 * wd + 2))
  for col in range(wd):
    for k in range(4):
      out[..., 2 * col + k] += np.einsum("nch,co->noh", x[..., col], w[:, :, 0, k])
  return out[..., 1:1 + 2 * wd] + b[None, :, None, None]


def _nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)), jnp.float32)


@pytest.mark.parametrize("kernel,stride,dilation,padding", [
    ((2, 2), (1, 1), 2, 1),   # SalsaNext conv4: 2x2, dilation 2, padding 1
    ((3, 3), (1, 2), 1, 1),   # DarkNet downsampling conv
    ((7, 7), (1, 1), 1, 3),   # SAC attention conv
])
def test_conv_mapping_matches_torch_semantics(kernel, stride, dilation, padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 6, 10))
  w, b = rng.normal(size=(4, 3) + kernel), rng.normal(size=4)
  want = _torch_conv2d(x, w, b, stride, (padding, padding), dilation)
  layer = layers.conv(4, kernel, stride=stride, dilation=dilation, padding=padding,
                      dtype=jnp.float32)
  got = layer.apply({"params": {"kernel": convert_torch.conv_kernel(w), "bias": b}}, _nhwc(x))
  np.testing.assert_allclose(np.transpose(got, (0, 3, 1, 2)), want, rtol=1e-5, atol=1e-5)


def test_conv_transpose_mapping_matches_torch_semantics():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 2, 5))
  w, b = rng.normal(size=(3, 4, 1, 4)), rng.normal(size=4)
  layer = rangenet.upconv(4, jnp.float32, "upconv")
  got = layer.apply({"params": {"kernel": convert_torch.conv_transpose_kernel(w), "bias": b}},
                    _nhwc(x))
  np.testing.assert_allclose(np.transpose(got, (0, 3, 1, 2)), _torch_conv_transpose_1x4(x, w, b),
                             rtol=1e-5, atol=1e-5)


def _torch_bn_eval(x, p, prefix):
  shape = (1, -1, 1, 1)
  return ((x - p[f"{prefix}.running_mean"].reshape(shape))
          / np.sqrt(p[f"{prefix}.running_var"].reshape(shape) + 1e-5)
          * p[f"{prefix}.weight"].reshape(shape) + p[f"{prefix}.bias"].reshape(shape))


def _torch_sac_block(xyz, x, p):
  """SqueezeSegV3 SAC block in eval mode, NCHW, with F.unfold's channel-major order."""
  n, c, h, w = x.shape
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  unfold = np.stack([xp[:, :, di:di + h, dj:dj + w] for di in range(3) for dj in range(3)],
                    axis=2).reshape(n, c * 9, h, w)
  pre = "backbone.enc1.residual_0"
  att = _torch_conv2d(xyz, p[f"{pre}.attention_x.0.weight"], p[f"{pre}.attention_x.0.bias"],
                      padding=(3, 3))
  att = 1 / (1 + np.exp(-_torch_bn_eval(att, p, f"{pre}.attention_x.1")))
  y = _torch_conv2d(unfold * att, p[f"{pre}.position_mlp_2.0.weight"],
                    p[f"{pre}.position_mlp_2.0.bias"])
  y = np.maximum(_torch_bn_eval(y, p, f"{pre}.position_mlp_2.1"), 0)
  y = _torch_conv2d(y, p[f"{pre}.position_mlp_2.3.weight"], p[f"{pre}.position_mlp_2.3.bias"],
                    padding=(1, 1))
  y = np.maximum(_torch_bn_eval(y, p, f"{pre}.position_mlp_2.4"), 0)
  return y + x


def test_sac_block_conversion_matches_torch_semantics():
  """The unfold-order permutation of the converter makes the Flax SAC block equal PyTorch's."""
  rng = np.random.default_rng(3)
  c, pre = 3, "backbone.enc1.residual_0"
  sd = _StateDict()
  _sac_block(sd, pre, c)
  p = {k: (rng.uniform(0.5, 1.5, s) if k.endswith("running_var") else rng.normal(size=s))
       for k, s in sd.shapes.items() if not k.endswith("num_batches_tracked")}
  variables = {}
  for path, array in convert_torch.map_tensors("squeezesegv3_21", p).items():
    variables.setdefault(path[0], {}).setdefault(path[4], {})[path[5]] = array
  xyz, x = rng.normal(size=(2, 3, 4, 6)), rng.normal(size=(2, c, 4, 6))
  got = squeezeseg.SACBlock(c, jnp.float32, None).apply(variables, _nhwc(xyz), _nhwc(x), False)
  np.testing.assert_allclose(np.transpose(got, (0, 3, 1, 2)), _torch_sac_block(xyz, x, p),
                             rtol=1e-4, atol=1e-4)


def test_batch_norm_eval_matches_torch_semantics():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 4, 3, 5))
  gamma, beta, mean, var = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), \
      rng.uniform(0.5, 2.0, size=4)
  want = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * gamma[:, None, None] \
      + beta[:, None, None]
  layer = layers.batch_norm(False)
  got = layer.apply({"params": {"scale": gamma, "bias": beta},
                     "batch_stats": {"mean": mean, "var": var}}, _nhwc(x))
  np.testing.assert_allclose(np.transpose(got, (0, 3, 1, 2)), want, rtol=1e-5, atol=1e-5)


def test_load_torch_checkpoint_without_torch_says_how_to_install(tmp_path, monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("no torch")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(ImportError, match=r"coarse3d_jax\[torch\]"):
    convert_torch.load_torch_checkpoint(str(tmp_path / "model.pth"))


def test_torch_conv_bn_and_upconv_match_flax(tmp_path):
  """Only where torch is installed: a tiny torch module vs the converted Flax layers."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  block = torch.nn.Sequential(torch.nn.Conv2d(5, 8, 3, stride=(1, 2), padding=1, bias=False),
                              torch.nn.BatchNorm2d(8, momentum=0.01))
  up = torch.nn.ConvTranspose2d(8, 4, kernel_size=(1, 4), stride=(1, 2), padding=(0, 1))
  block.train()
  block(torch.randn(4, 5, 6, 16) * 3 + 1)  # moves the running statistics away from 0 / 1
  block.eval()
  path = tmp_path / "tiny.pth"
  torch.save({"model": {"module." + k: v for k, v in {**block.state_dict(),
              **{"up." + k: v for k, v in up.state_dict().items()}}.items()}}, path)
  sd = convert_torch.load_torch_checkpoint(str(path))
  x = torch.randn(2, 5, 6, 16)
  with torch.no_grad():
    want = up(block(x)).numpy()

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = layers.conv(8, 3, stride=(1, 2), use_bias=False, dtype=jnp.float32, name="conv")(x)
      y = layers.batch_norm(False, momentum=0.01, name="bn")(y)
      return rangenet.upconv(4, jnp.float32, "up")(y)

  variables = {
      "params": {"conv": {"kernel": convert_torch.conv_kernel(sd["0.weight"])},
                 "bn": {"scale": sd["1.weight"], "bias": sd["1.bias"]},
                 "up": {"kernel": convert_torch.conv_transpose_kernel(sd["up.weight"]),
                        "bias": sd["up.bias"]}},
      "batch_stats": {"bn": {"mean": sd["1.running_mean"], "var": sd["1.running_var"]}}}
  got = Tiny().apply(variables, _nhwc(x.numpy()))
  np.testing.assert_allclose(np.transpose(got, (0, 3, 1, 2)), want, rtol=1e-4, atol=1e-4)
