"""Bilinear resizing (align_corners=True) and its hand-written gradient against float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coarse3d_jax.models import resize


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) float64 align_corners=True linear interpolation matrix."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = 0.0 if n_out == 1 else i * (n_in - 1) / (n_out - 1)
    lo = min(int(np.floor(src)), n_in - 1)
    hi = min(lo + 1, n_in - 1)
    m[i, lo] += 1 - (src - lo)
    m[i, hi] += src - lo
  return m


@pytest.mark.parametrize("shape_in,shape_out", [((5, 7), (10, 14)), ((8, 9), (4, 3)),
                                                ((3, 4), (1, 1)), ((6, 6), (6, 6))])
def test_resize_bilinear_align_corners(shape_in, shape_out):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1,) + shape_in + (2,))

  def src(i, n_in, n_out):
    return 0.0 if n_out == 1 else i * (n_in - 1) / (n_out - 1)

  want = np.zeros((1,) + shape_out + (2,))
  for i in range(shape_out[0]):
    for j in range(shape_out[1]):
      y, xx = src(i, shape_in[0], shape_out[0]), src(j, shape_in[1], shape_out[1])
      y0, x0 = int(np.floor(y)), int(np.floor(xx))
      y1, x1 = min(y0 + 1, shape_in[0] - 1), min(x0 + 1, shape_in[1] - 1)
      fy, fx = y - y0, xx - x0
      want[0, i, j] = ((1 - fy) * (1 - fx) * x[0, y0, x0] + (1 - fy) * fx * x[0, y0, x1]
                       + fy * (1 - fx) * x[0, y1, x0] + fy * fx * x[0, y1, x1])
  got = resize.resize_bilinear(jnp.asarray(x, jnp.float32), *shape_out)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cropped = resize.resize_bilinear(jnp.asarray(x, jnp.float32), *shape_out,
                                   crop=(max(1, shape_out[0] - 1), max(1, shape_out[1] - 2)))
  np.testing.assert_allclose(cropped, got[:, :cropped.shape[1], :cropped.shape[2]], rtol=1e-6)


@pytest.mark.parametrize("shape_in,shape_out,crop", [
    ((5, 7), (10, 14), None), ((8, 64), (32, 256), (30, 250)), ((64, 16), (32, 40), None),
    ((1, 3), (4, 9), (2, 5))])
def test_resize_bilinear_gradient_is_the_transposed_interpolation(shape_in, shape_out, crop):
  """The custom gradient (a gather over outputs) equals M_h^T g M_w in float64."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2,) + shape_in + (3,))
  keep = crop or shape_out
  mh = interp_matrix(shape_in[0], shape_out[0])[:keep[0]]
  mw = interp_matrix(shape_in[1], shape_out[1])[:keep[1]]
  y, vjp = jax.vjp(lambda a: resize.resize_bilinear(a, *shape_out, crop=crop),
                   jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y, np.einsum("hi,wj,bijc->bhwc", mh, mw, x), rtol=1e-5, atol=1e-5)
  g = rng.normal(size=y.shape)
  (grad,) = vjp(jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(grad, np.einsum("hi,wj,bhwc->bijc", mh, mw, g),
                             rtol=1e-5, atol=1e-5)
