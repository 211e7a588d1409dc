"""Resizing of NHWC maps: PyTorch's bilinear interpolation and nearest upsampling.

`resize_bilinear` is `F.interpolate(mode='bilinear', align_corners=True)`, separable, with a
hand-written gradient (autodiff's transpose of its gathers is a scatter-add, which XLA:CPU runs
one window at a time). `align_corners_taps` gives its 1-D taps to code that interpolates at
chosen pixels only (`projection_head.embedding_at`).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def align_corners_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Indices (lo, hi) and weight of hi for 1-D linear interpolation with align_corners=True.

  Returns three (n_out,) arrays: int32 lo, int32 hi, float32 weight of hi.
  """
  if n_out == 1 or n_in == 1:
    pos = np.zeros(n_out)
  else:
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  lo = np.minimum(np.floor(pos).astype(np.int32), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, (pos - lo).astype(np.float32)


def _transposed_taps(n_in: int, n_out: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
  """The transpose of the first `keep` interpolation rows as (n_in, T) output indices/weights.

  Input sample j receives from the outputs whose lo or hi tap is j; padding taps have weight 0.
  """
  lo, hi, frac = (a[:keep] for a in align_corners_taps(n_in, n_out))
  sources = np.concatenate([lo, hi])
  outputs = np.concatenate([np.arange(keep), np.arange(keep)])
  weights = np.concatenate([1.0 - frac, frac]).astype(np.float32)
  order = np.argsort(sources, kind="stable")
  sources, outputs, weights = sources[order], outputs[order], weights[order]
  counts = np.bincount(sources, minlength=n_in)
  slot = np.arange(len(sources)) - np.repeat(np.cumsum(counts) - counts, counts)
  idx = np.zeros((n_in, max(1, counts.max())), np.int32)
  wts = np.zeros(idx.shape, np.float32)
  idx[sources, slot] = outputs
  wts[sources, slot] = weights
  return idx, wts


def _expand(v: np.ndarray, ndim: int, axis: int, dtype) -> Array:
  """v (n,) as an array of `ndim` dims, n along `axis` and 1 elsewhere, to broadcast."""
  shape = [1] * ndim
  shape[axis] = v.shape[0]
  return jnp.asarray(v.reshape(shape), dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _resize_axis_linear(x: Array, axis: int, n_out: int, keep: int) -> Array:
  lo, hi, frac = (a[:keep] for a in align_corners_taps(x.shape[axis], n_out))
  x_lo = jnp.take(x, jnp.asarray(lo), axis=axis)
  x_hi = jnp.take(x, jnp.asarray(hi), axis=axis)
  return x_lo + _expand(frac, x.ndim, axis, x.dtype) * (x_hi - x_lo)


def _resize_axis_fwd(x, axis, n_out, keep):
  # Only the static size of x is needed for the gradient: keep a zero-size witness of it.
  return _resize_axis_linear(x, axis, n_out, keep), jnp.zeros((0, x.shape[axis]), x.dtype)


def _resize_axis_bwd(axis, n_out, keep, witness, g):
  # The autodiff transpose of the two takes is a scatter-add, which XLA:CPU runs one window
  # at a time; the transpose as a fixed-width gather over the outputs is much faster.
  idx, wts = _transposed_taps(witness.shape[1], n_out, keep)
  grad = 0
  for t in range(idx.shape[1]):
    grad = grad + jnp.take(g, jnp.asarray(idx[:, t]), axis=axis) * _expand(
        wts[:, t], g.ndim, axis, g.dtype)
  return (grad,)


_resize_axis_linear.defvjp(_resize_axis_fwd, _resize_axis_bwd)


def _resize_axis(x: Array, axis: int, n_out: int, keep: int | None = None) -> Array:
  """Linear resize of one axis to n_out samples (align_corners=True); keeps the first `keep`."""
  keep = n_out if keep is None else keep
  if x.shape[axis] == n_out and keep == n_out:
    return x
  return _resize_axis_linear(x, axis, n_out, keep)


def resize_bilinear(x: Array, height: int, width: int,
                    crop: tuple[int, int] | None = None) -> Array:
  """`F.interpolate(x, (height, width), mode='bilinear', align_corners=True)`, NHWC.

  Separable two-tap interpolation with static gather indices: O(output) work, unlike a dense
  interpolation matrix. With `crop=(h, w)` only the top-left h x w outputs are computed,
  exactly equal to resizing and then cropping.
  x: (B, h_in, w_in, C) -> (B, height, width, C) or (B, *crop, C).
  """
  keep_h, keep_w = crop if crop is not None else (height, width)
  x = _resize_axis(x, 2, width, keep_w)
  return _resize_axis(x, 1, height, keep_h)


def upsample_nearest(x: Array, factor_h: int, factor_w: int) -> Array:
  """Repeats every pixel into a factor_h x factor_w block. x: (B, H, W, C)."""
  if factor_h > 1:
    x = jnp.repeat(x, factor_h, axis=1)
  if factor_w > 1:
    x = jnp.repeat(x, factor_w, axis=2)
  return x
