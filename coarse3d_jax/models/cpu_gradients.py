"""Parameter-free ops whose hand-written gradients avoid XLA:CPU's slow convolution gradients.

On CPU the kernel gradients of float32 convolutions are the train step's bottleneck: XLA:CPU
computes them several times slower than the forward convolutions. The ops here compute the same
values as the convolutions they replace, with gradients laid out for XLA:CPU:

- `pointwise_product`: a 1x1 convolution as a matrix product, whose kernel gradient puts the
  narrower of input and cotangent where XLA:CPU writes a transposed operand;
- `spatial_conv`: a stride-1 convolution whose kernel gradient is one matrix product per kernel
  tap (`conv_kernel_gradient`, on `shift_pixels` copies).

Only XLA:CPU takes the per-tap path: `spatial_conv` picks it with `jax.lax.platform_dependent`,
so a step compiled for a GPU or TPU keeps that platform's own convolution gradient (cuDNN's,
the TPU's). `benchmarks/bench_train.py` measures the effect on the train step
(benchmarks/README.md). `sum_to_type_of` gives the hand-written gradients autodiff's types under
`jax.shard_map`.
"""
import functools

import jax
import jax.numpy as jnp

Array = jax.Array

# Below this many input channels the per-tap products are too thin to beat XLA's own kernel
# gradient; at 32 they are on par per layer and faster inside the train step
# (`benchmarks/bench_train.py`).
PER_TAP_MIN_CHANNELS = 32


@jax.custom_vjp
def pointwise_product(x: Array, kernel: Array) -> Array:
  """x (..., C) @ kernel (C, F) -> (..., F), with a gradient laid out for XLA:CPU.

  The kernel gradient contracts over every pixel, and XLA:CPU writes the left-hand operand of
  that product transposed, fused into whatever produced it. This puts the narrower of x and
  the cotangent there, which for the projection head's 704-channel maps means transposing
  (and recomputing) 3-4x fewer values than autodiff's order.
  """
  return _dot(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _dot(a: Array, b: Array, dims) -> Array:
  """dot_general accumulated in (at least) float32 and returned in a's dtype.

  Low-precision products go to the CPU's bfloat16 matrix units (AMX, AVX-512 BF16) only when
  XLA is asked for a float32 result; a bfloat16 result makes XLA:CPU compute them several times
  slower.
  """
  accumulate = jnp.promote_types(a.dtype, jnp.float32)
  return jax.lax.dot_general(a, b, dims, preferred_element_type=accumulate).astype(a.dtype)


def _pointwise_product_fwd(x, kernel):
  return pointwise_product(x, kernel), (x, kernel)


def _pointwise_product_bwd(residuals, g):
  x, kernel = residuals
  dx = _dot(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
  pixels = tuple(range(x.ndim - 1))
  if x.shape[-1] <= g.shape[-1]:
    dk = _dot(x, g, ((pixels, pixels), ((), ())))
  else:
    dk = _dot(g, x, ((pixels, pixels), ((), ()))).T
  return dx, sum_to_type_of(dk, kernel)


pointwise_product.defvjp(_pointwise_product_fwd, _pointwise_product_bwd)


def _conv_nhwc(x: Array, kernel: Array, dilation: int, padding: tuple[int, int]) -> Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), tuple((p, p) for p in padding), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def spatial_conv(x: Array, kernel: Array, dilation: int, padding: tuple[int, int]) -> Array:
  """Stride-1 NHWC convolution (HWIO kernel, symmetric zero padding) with a fast kernel gradient.

  XLA:CPU computes the kernel gradient of a spatial convolution many times slower than the
  forward pass, and in a SalsaNext train step those gradients took the largest share of the
  time. Here it is one matrix product per kernel tap (`conv_kernel_gradient`; the gain is
  measured by `benchmarks/bench_train.py`, benchmarks/README.md).
  The input gradient stays XLA's (a convolution, as fast as the forward pass), and so does the
  kernel gradient wherever the step is compiled for anything but a CPU.
  x: (B, H, W, C); kernel: (k_h, k_w, C, F) -> (B, H + 2 p_h - d (k_h - 1), ..., F).
  """
  return _conv_nhwc(x, kernel, dilation, padding)


def _spatial_conv_fwd(x, kernel, dilation, padding):
  return _conv_nhwc(x, kernel, dilation, padding), (x, kernel)


def _spatial_conv_bwd(dilation, padding, residuals, g):
  x, kernel = residuals
  conv_of = lambda x, kernel: _conv_nhwc(x, kernel, dilation, padding)
  autodiff = lambda x, g: jax.vjp(conv_of, x, kernel)[1](g)
  if x.shape[-1] < PER_TAP_MIN_CHANNELS:
    return autodiff(x, g)

  def per_tap(x, g):
    (dx,) = jax.vjp(lambda x: conv_of(x, kernel), x)[1](g)
    dk = conv_kernel_gradient(x, g, kernel.shape, dilation, padding)
    return dx, sum_to_type_of(dk, kernel)
  # The slow kernel gradient is XLA:CPU's, and the per-tap workaround was measured there only:
  # GPUs and TPUs keep their own convolution gradient (cuDNN's, the TPU's).
  return jax.lax.platform_dependent(x, g, cpu=per_tap, default=autodiff)


spatial_conv.defvjp(_spatial_conv_fwd, _spatial_conv_bwd)


def conv_kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], dilation: int,
                         padding: tuple[int, int]) -> Array:
  """sum over (b, h, w) of x_pad[b, h + d i, w + d j, c] g[b, h, w, f] (>= float32 sums).

  x: (B, H, W, C); g: (B, H_out, W_out, F) -> (k_h, k_w, C, F) in x's dtype.

  Kernel tap (i, j) pairs x at (h + s, w + t) with g at (h, w), (s, t) = (d i - p_h, d j - p_w).
  The narrower of x and g is shifted by (s, t) once per tap, zero-filled, in its own pixel-major
  layout (runs of W x channels values: a fast copy); the other is transposed to channel-major
  once, so that each tap is the (channels, pixels) @ (pixels, channels) product XLA:CPU runs
  fastest. Neither is padded first: XLA:CPU fuses a pad with a transpose into a copy many times
  slower than the transpose alone.
  """
  kh, kw, c, f = kernel_shape
  b, h, w, _ = x.shape
  _, h_out, w_out, _ = g.shape
  frame_h, frame_w = max(h, h_out), max(w, w_out)  # Both in one frame: x's unless g is larger.
  x = jnp.pad(x, ((0, 0), (0, frame_h - h), (0, frame_w - w), (0, 0)))
  g = jnp.pad(g, ((0, 0), (0, frame_h - h_out), (0, frame_w - w_out), (0, 0)))
  pixels = b * frame_h * frame_w
  offsets = [(i * dilation - padding[0], j * dilation - padding[1])
             for i in range(kh) for j in range(kw)]
  # Whatever is built from x alone, XLA:CPU built as soon as x existed (in the forward pass)
  # and kept until its products at the end of the backward pass, multiplying a train step's
  # temporary memory and page faults. Adding a zero computed from g makes it wait for the
  # cotangent (`optimization_barrier` does not: XLA:CPU drops it before scheduling);
  # 0 * isfinite(.) is 0 even for a non-finite g.
  x = x + jnp.isfinite(g.reshape(-1)[0]).astype(x.dtype) * 0
  contract = (((1,), (0,)), ((), ()))
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  # Shifting g by (-s, -t) lines it up with x as shifting x by (s, t) lines x up with g.
  fixed, moving, sign = (x, g, -1) if f <= c else (g, x, 1)
  fixed_cm = jnp.moveaxis(fixed, -1, 0).reshape(-1, pixels)
  taps = [shift_pixels(moving, sign * s, sign * t).reshape(pixels, -1) for s, t in offsets]
  products = [jax.lax.dot_general(fixed_cm, tap, contract, preferred_element_type=accumulate)
              for tap in taps]
  grad = jnp.stack(products).reshape(kh, kw, *products[0].shape)  # (.., fixed, moving) channels
  return (grad if f <= c else grad.swapaxes(2, 3)).astype(x.dtype)


def shift_pixels(image: Array, rows: int, cols: int) -> Array:
  """image: (B, H, W, C) -> out[:, h, w] = image[:, h + rows, w + cols], zero outside image."""
  keep = (0, 0, 0)
  return jax.lax.pad(image, jnp.zeros((), image.dtype),
                     (keep, (-rows, rows, 0), (-cols, cols, 0), keep))


def sum_to_type_of(cotangent: Array, primal: Array) -> Array:
  """psums a hand-written cotangent over the mesh axes it varies on and `primal` does not.

  Under `jax.shard_map`, autodiff sums the gradient of a replicated value over the devices; a
  custom VJP has to do the same for its result to have the primal's (replicated) type.
  """
  def varying(x):
    return getattr(getattr(jax.typeof(x), "manual_axis_type", None), "varying", frozenset())
  axes = tuple(sorted(varying(cotangent) - varying(primal)))
  return jax.lax.psum(cotangent, axes) if axes else cotangent
