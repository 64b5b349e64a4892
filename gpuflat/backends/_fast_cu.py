"""The text of ``kernels/fast.cu``: the fast combine kernels, one straight-line kernel per
stack size n (1 to ``FAST_MAX``), generated from the networks of ``_networks``.

They are the numba fast path (``_numba_fast.py``) on the GPU, one thread per pixel, with
every value in a register and every index a compile-time constant (no local memory):

- the same eligibility: every sample unmasked, within min/max, and its scaled value
  ``0 < |y| <= 1e300`` (``fast_eligible`` for the parameters, checked by the host);
- the frame-order sums (Σy, the mean, Σ(y - mean)², and Σwy, Σw with weights) first, from
  the registers in frame order, then the sort in place: Green's 60-comparator network on
  each run of 16 (the 19-comparator one on a last run of 8 or fewer), then Batcher's merge
  of the sorted runs (``_networks.merge_network``); the rows past n are +inf, so the
  comparators that touch them are left out;
- the median, and the MAD as the mean of two order statistics of the two sorted runs of
  deviations about it (``min_i max(A[i-1], B[r-i])``, ``_numba_fast._kth``);
- a pixel that clips nothing is written at once. One that clips, when the contract asks
  for nothing more than its survivors' sums (one iteration, average or sum), goes on the
  clip list with its bounds in ``image``/``uncert``, for ``gpuflat_fast_clip``; any other
  pixel the kernel cannot vouch for goes on the general list, for the general kernel
  (combine.cu, ``gpuflat_combine_16/32/64`` given the list). Both lists share one buffer
  (general entries from the front, clip entries from the back) and are appended to warp by
  warp.

``python -m gpuflat.backends._generate`` writes the file; tests/test_cuda_kernels.py checks
that it is what :func:`render` gives. Pure Python: nothing here is compiled.
"""

from __future__ import annotations

import math
import pathlib

from ._networks import batcher

FAST_MAX = 48  # the largest stack with a fast kernel (its values fill the registers)
FAST_CU = pathlib.Path(__file__).resolve().parents[2] / "kernels" / "fast.cu"

#: Green's 60-comparator network for 16 inputs (as in ``_numba_fast._load_sort16``)
GREEN16 = (
    (0, 13), (1, 12), (2, 15), (3, 14), (4, 8), (5, 6), (7, 11), (9, 10),
    (0, 5), (1, 7), (2, 9), (3, 4), (6, 13), (8, 14), (10, 15), (11, 12),
    (0, 1), (2, 3), (4, 5), (6, 8), (7, 9), (10, 11), (12, 13), (14, 15),
    (0, 2), (1, 3), (4, 10), (5, 11), (6, 7), (8, 9), (12, 14), (13, 15),
    (1, 2), (3, 12), (4, 6), (5, 7), (8, 10), (9, 11), (13, 14),
    (1, 4), (2, 6), (5, 8), (7, 10), (9, 13), (11, 14),
    (2, 4), (3, 6), (9, 12), (11, 13),
    (3, 5), (6, 8), (7, 9), (10, 12),
    (3, 4), (5, 6), (7, 8), (9, 10), (11, 12),
    (6, 7), (8, 9),
)  # fmt: skip
#: the 19-comparator network for 8 inputs (``_numba_fast._load_sort8``)
SORT8 = (
    (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7), (0, 1), (2, 3),
    (4, 5), (6, 7), (2, 4), (3, 5), (1, 4), (3, 6), (1, 2), (3, 4), (5, 6),
)  # fmt: skip


def sort_network(n: int) -> list[tuple[int, int]]:
    """The comparators the fast kernel for n frames applies: each run of 16 sorted by
    Green's network (a last run of at most 8 by ``SORT8``), then Batcher's merge of the
    runs; comparators touching rows past n (which would hold +inf) left out."""
    pairs = []
    for b in range(0, n, 16):
        size = min(16, n - b)
        net = SORT8 if size <= 8 else GREEN16
        pairs += [(b + i, b + j) for i, j in net if j < size]
    if n > 16:
        pairs += batcher(n, 16)
    return pairs


def kth_terms(n: int, r: int) -> list[tuple[int | None, int | None]]:
    """The splits of the r-th smallest (0-based) deviation of n sorted values about their
    median: per split, the row of ``A[i-1] = med - T[a]`` and of ``B[r-i] = T[b] - med``
    (None where that side is empty), the order statistic being ``min over splits of
    max(A, B)`` (``_numba_fast._kth``)."""
    h1 = (n - 1) // 2
    p = h1 + 1
    q = n - p
    terms = []
    for i in range(max(0, r + 1 - q), min(p, r + 1) + 1):
        a = None if i == 0 else h1 - (i - 1)
        b = None if i == r + 1 else h1 + 1 + r - i
        terms.append((a, b))
    return terms


def _kth_expr(n: int, r: int) -> str:
    parts = []
    for a, b in kth_terms(n, r):
        da = None if a is None else f"med - y{a}"
        db = None if b is None else f"y{b} - med"
        parts.append(f"gf_dmax({da}, {db})" if da and db else (da or db))
    expr = parts[0]
    for part in parts[1:]:
        expr = f"gf_dmin({part}, {expr})"
    return expr


def _chain(items, op: str, start: str) -> list[str]:
    return [f"    {start} = {start} {op} {item};\n" for item in items]


def _kernel(n: int) -> list[str]:
    ys = [f"y{i}" for i in range(n)]
    h1, h2 = (n - 1) // 2, n // 2
    out = [
        "\n",
        f"#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_fast_{n})\n",
        f'extern "C" __global__ void gpuflat_fast_{n}(GF_FAST_ARGS) {{\n',
        "  GF_FAST_SETUP\n",
    ]
    out += [f"  double y{i} = gf_widen(d[{i} * npix]) * scale[{i}];\n" for i in range(n)]
    out += ["  bool ok = " + " & ".join(f"gf_fast_ok({y})" for y in ys) + ";\n"]
    out += [
        "  if (mask) {\n",
        "    // gf-rare\n",
        "    const unsigned char *m = mask + p;\n",
        "    ok = ok & " + " & ".join(f"(m[{i} * npix] == 0)" for i in range(n)) + ";\n",
        "    // gf-rare-end\n",
        "  }\n",
        "  if (min_value > -gf_inf() || max_value < gf_inf()) {\n",
        "    // gf-rare\n",
        "    ok = ok & "
        + " & ".join(f"gf_in(d[{i} * npix], min_value, max_value)" for i in range(n))
        + ";\n",
        "    // gf-rare-end\n",
        "  }\n",
        "  // 6's sums in frame order, before the sort permutes the registers\n",
        "  double sy = 0.0, ss = 0.0, swy = 0.0, sw = 0.0, mean = 0.0;\n",
        "  if (method != 1) {\n",
    ]
    out += [f"    sy = sy + {y};\n" for y in ys]
    out += [f"    mean = sy / {n}.0;\n", "    double e;\n"]
    for y in ys:
        out += [f"    e = {y} - mean;\n", "    ss = ss + e * e;\n"]
    out += ["    if (weight) {\n", "      // gf-rare\n"]
    for i in range(n):
        out += [f"      swy = swy + weight[{i}] * y{i};\n", f"      sw = sw + weight[{i}];\n"]
    out += ["      // gf-rare-end\n", "    }\n", "  }\n", "  // 3: sort\n"]
    out += [f"  GF_CX(y{a}, y{b});\n" for a, b in sort_network(n)]
    out += [
        "  // 5: the median, the MAD, the bounds\n",
        # for odd n, (x + x) * 0.5 == x: no overflow below 1e300
        f"  const double med = {f'(y{h1} + y{h2}) * 0.5' if h2 != h1 else f'y{h1}'};\n",
        f"  const double d1 = {_kth_expr(n, h1)};\n",
        f"  const double mad = {f'(d1 + ({_kth_expr(n, h2)})) * 0.5' if h2 != h1 else 'd1'};\n",
        f"  gf_fast_finish({n}, {math.sqrt(n).hex()} /* sqrt({n}) */, p, t, nthreads, ok, y0,"
        f" y{n - 1},\n"
        "                 med, mad, sy, ss, swy, sw, mean, weight != 0, sigma_low, sigma_high,\n"
        "                 maxiters, method, image, uncert, count, list, counts);\n",
        "}\n",
        "#endif\n",
    ]
    return out


_HEAD = r"""// fast.cu: the fast combine kernels, one straight-line kernel per stack size n.
//
// GENERATED by `python -m gpuflat.backends._generate` from gpuflat/backends/_fast_cu.py
// (see there); do not edit by hand. tests/test_cuda_kernels.py checks that it is current.
//
// The numba fast path (gpuflat/backends/_numba_fast.py) on the GPU: the guide's parameters
// (clip the scaled values, no extrema window, sigma clipping about the median with a
// mad_std width, maxiters != 0, no ccdclip or nkeep: the host checks), one thread per
// pixel, every value in a register. Bit for bit the general kernel's results (combine.cu,
// docs/kernel-contract.md) on the pixels it vouches for; the others go on lists:
//
//   gpuflat_fast_<n>   (n = 1 .. 48) every pixel of the launch; writes the pixels that are
//                      eligible (every sample unmasked, within min/max, its scaled value
//                      0 < |y| <= 1e300) and clip nothing; appends to `list`:
//                        from the front (counts[0]) the pixels for the general kernel;
//                        from the back (list[cap - 1 - j], counts[1]) the pixels that clip
//                        and need only their survivors' sums (maxiters 1, average or sum),
//                        with their bounds left in image (lo) and uncert (hi);
//   gpuflat_fast_clip  the clip list: survivors lo <= y <= hi, frame-order sums, rejected
//                      counts; every thread runs the same loop over the frames;
//   gpuflat_combine_16/32/64 (combine.cu, the general kernel) over the general list.
//
// All on one stream, in that order, after counts[0] = counts[1] = 0: no host sync. The
// list kernels run any grid (grid-stride over the list).
//
// Arguments of gpuflat_fast_<n>:
//   const float *data [n * npix], const unsigned char *mask [n * npix] or NULL,
//   const double *scale [n], const double *weight [n] or NULL, long long npix (row
//   stride), long long p0, long long nthreads, double min_value, double max_value,
//   double sigma_low, double sigma_high, int maxiters, int method, double *image,
//   double *uncert, int *count, unsigned int *list [nthreads], unsigned int *counts [2]
// Arguments of gpuflat_fast_clip:
//   const float *data, const double *scale, const double *weight or NULL, int n,
//   long long npix, long long p0, long long cap (the fast launch's nthreads), int method,
//   const unsigned int *list, const unsigned int *counts, double *image, double *uncert,
//   int *count, unsigned long long *rejected [n] or NULL
//
// List entries are pixel offsets from p0 (32-bit: a launch covers fewer than 2^32 pixels).
// The appends are warp-aggregated on the GPU (one atomic per warp and list); the CPU shim
// (kernels/cuda_shim.h) runs threads one at a time, where each thread appends alone: the
// order of a list's entries differs, what the list holds does not, and no result depends
// on that order.

#define GF_MAD_TO_STD 1.482602218505602

// float -> double without flushing subnormals (see gf_widen in combine.cu)
__device__ __forceinline__ double gf_widen(float x) {
#ifdef __CUDA_ARCH__
  double d;
  asm("cvt.f64.f32 %0, %1;" : "=d"(d) : "f"(x));
  return d;
#else
  return (double)x;
#endif
}

__device__ __forceinline__ double gf_inf() { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ double gf_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

// a scaled value the fast kernels vouch for: 0 < |y| <= 1e300 (no NaN, no infinity, no
// signed zero, no overflow in the sums and differences)
__device__ __forceinline__ bool gf_fast_ok(double y) {
  double a = fabs(y);
  return (a > 0.0) & (a <= 1e300);
}
__device__ __forceinline__ bool gf_in(float x, double lo, double hi) {
  double v = gf_widen(x);
  return (v >= lo) & (v <= hi);
}
__device__ __forceinline__ double gf_dmax(double a, double b) { return a > b ? a : b; }
__device__ __forceinline__ double gf_dmin(double c, double acc) { return c < acc ? c : acc; }

// compare-exchange: the smaller value to a, the larger to b
#define GF_CX(a, b)                    \
  {                                    \
    const bool lt_ = (b) < (a);        \
    const double lo_ = lt_ ? (b) : (a); \
    (b) = lt_ ? (a) : (b);             \
    (a) = lo_;                         \
  }

// Append `value` to one of two lists in `list`: the general list from the front (counter
// counts[0]) or the clip list from the back (counts[1]). On the GPU the lanes of a warp
// that append to the same list take one atomic together.
__device__ __forceinline__ void gf_append(unsigned int *list, unsigned int *counts,
                                          long long cap, bool general, bool clipped,
                                          unsigned int value) {
#ifdef __CUDA_ARCH__
  const unsigned int active = __activemask();
  const unsigned int lane = threadIdx.x & 31u;
  const unsigned int below = (1u << lane) - 1u;
  const unsigned int g = __ballot_sync(active, general);
  const unsigned int c = __ballot_sync(active, clipped);
  if (g != 0u) {
    // gf-rare
    const int leader = __ffs(g) - 1;
    unsigned int base = 0u;
    if ((int)lane == leader) base = atomicAdd(&counts[0], (unsigned int)__popc(g));
    base = __shfl_sync(active, base, leader);
    if (general) list[base + __popc(g & below)] = value;
    // gf-rare-end
  }
  if (c != 0u) {
    // gf-rare
    const int leader = __ffs(c) - 1;
    unsigned int base = 0u;
    if ((int)lane == leader) base = atomicAdd(&counts[1], (unsigned int)__popc(c));
    base = __shfl_sync(active, base, leader);
    if (clipped) list[cap - 1 - (long long)(base + __popc(c & below))] = value;
    // gf-rare-end
  }
#else
  if (general) list[atomicAdd(&counts[0], 1u)] = value;
  if (clipped) list[cap - 1 - (long long)atomicAdd(&counts[1], 1u)] = value;
#endif
}

// The end of every fast kernel, after the sort: the bounds, then the pixel written, or
// put on a list. rk: sqrt(n), correctly rounded (as sqrt gives it), a constant.
__device__ __forceinline__ void gf_fast_finish(
    int n, double rk, long long p, long long t, long long nthreads, bool ok, double smin,
    double smax, double med, double mad, double sy, double ss, double swy, double sw,
    double mean, bool weighted, double sigma_low, double sigma_high, int maxiters,
    int method, double *__restrict__ image, double *__restrict__ uncert,
    int *__restrict__ count, unsigned int *__restrict__ list, unsigned int *counts) {
  const double inf = gf_inf();
  const double dd = GF_MAD_TO_STD * mad;
  const double lo = sigma_low == inf ? -inf : med - sigma_low * dd;
  const double hi = sigma_high == inf ? inf : med + sigma_high * dd;
  const bool clips = (smin < lo) | (smax > hi);
  // a pixel that clips needs more than its survivors' sums for the median or a further
  // iteration: the general kernel
  const bool general = (!ok) | (clips & ((method == 1) | (maxiters != 1)));
  const bool clipped = ok & clips & (!general);
  if ((!general) & (!clipped)) {
    const double k = (double)n;
    if (method == 1) {
      // gf-rare (here and below: off the common path, which bench/kernel_stats.py counts)
      image[p] = med;
      uncert[p] = GF_MAD_TO_STD * mad / rk;
      // gf-rare-end
    } else {
      const double sd = sqrt(ss / k);
      if (method == 0) {
        image[p] = weighted ? swy / sw : mean;
        uncert[p] = sd / rk;
      } else {
        // gf-rare
        image[p] = weighted ? swy : sy;
        uncert[p] = sd * rk;
        // gf-rare-end
      }
    }
    count[p] = n;
  } else if (clipped) {
    // gf-rare
    image[p] = lo;
    uncert[p] = hi;
    // gf-rare-end
  }
  gf_append(list, counts, nthreads, general, clipped, (unsigned int)t);
}

#define GF_FAST_ARGS                                                                        \
  const float *__restrict__ data, const unsigned char *__restrict__ mask,                  \
      const double *__restrict__ scale, const double *__restrict__ weight, long long npix, \
      long long p0, long long nthreads, double min_value, double max_value,                 \
      double sigma_low, double sigma_high, int maxiters, int method,                        \
      double *__restrict__ image, double *__restrict__ uncert, int *__restrict__ count,    \
      unsigned int *__restrict__ list, unsigned int *__restrict__ counts

#define GF_FAST_SETUP                                             \
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
  if (t >= nthreads) return;                                      \
  const long long p = p0 + t;                                     \
  const float *d = data + p;

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_fast_clip)
extern "C" __global__ void gpuflat_fast_clip(
    const float *__restrict__ data, const double *__restrict__ scale,
    const double *__restrict__ weight, int n, long long npix, long long p0, long long cap,
    int method, const unsigned int *__restrict__ list, const unsigned int *__restrict__ counts,
    double *__restrict__ image, double *__restrict__ uncert, int *__restrict__ count,
    unsigned long long *__restrict__ rejected) {
  const long long step = (long long)gridDim.x * blockDim.x;
  const long long len = counts[1];
  for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < len; j += step) {
    const long long p = p0 + list[cap - 1 - j];
    const double lo = image[p];
    const double hi = uncert[p];
    // the survivors (lo <= y <= hi), their sums in frame order; a dropped frame adds
    // +0.0, which leaves these sums (never -0.0) as they are
    double sy = 0.0, swy = 0.0, sw = 0.0;
    int k = 0;
    for (int i = 0; i < n; ++i) {
      const double y = gf_widen(data[(long long)i * npix + p]) * scale[i];
      const bool keep = (!(y < lo)) & (!(y > hi));
      sy = sy + (keep ? y : 0.0);
      k += keep ? 1 : 0;
      if (weight) {
        swy = swy + (keep ? weight[i] * y : 0.0);
        sw = sw + (keep ? weight[i] : 0.0);
      }
      if (!keep && rejected) atomicAdd(&rejected[i], 1ull);
    }
    count[p] = k;
    if (k == 0) {  // zero-width bounds between two middle values: nothing survives
      image[p] = gf_nan();
      uncert[p] = gf_nan();
      continue;
    }
    const double kd = (double)k;
    const double mean = sy / kd;
    double ss = 0.0;
    for (int i = 0; i < n; ++i) {
      const double y = gf_widen(data[(long long)i * npix + p]) * scale[i];
      const bool keep = (!(y < lo)) & (!(y > hi));
      const double e = y - mean;
      ss = ss + (keep ? e * e : 0.0);
    }
    const double sd = sqrt(ss / kd);
    if (method == 0) {
      image[p] = weight ? swy / sw : mean;
      uncert[p] = sd / sqrt(kd);
    } else {
      image[p] = weight ? swy : sy;
      uncert[p] = sd * sqrt(kd);
    }
  }
}
#endif
"""


def render() -> str:
    """The text of ``kernels/fast.cu``."""
    out = [_HEAD]
    for n in range(1, FAST_MAX + 1):
        out += _kernel(n)
    # the CPU build's entries, each in its kernel's guard (the tests build parts of the file)
    out += ["\n#ifdef GPUFLAT_HOST_SHIM\n"]
    for name in ["gpuflat_fast_clip"] + [f"gpuflat_fast_{n}" for n in range(1, FAST_MAX + 1)]:
        out += [
            f"#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_{name})\n",
            f"GPUFLAT_HOST_ENTRY({name})\n",
            "#endif\n",
        ]
    out += ["#endif\n"]
    return "".join(out)
