// combine.cu: per-pixel rejection and combination of one band of a flat-field stack.
//
// Implements docs/kernel-contract.md operation for operation, so that the results equal
// the numba backend (gpuflat/backends/_numba.py) bit for bit. Compile without fused
// multiply-add (nvcc/NVRTC --fmad=false; g++ -ffp-contract=off) and never with fast-math.
// No standard headers are included: the file compiles under NVRTC as it is.
//
// One thread per output pixel; threads never communicate (no shared memory, no
// __syncthreads), so the harness in tests/ can also run the grid on the CPU through
// kernels/cuda_shim.h.
//
// Kernels (all with the same argument list, below):
//   gpuflat_combine_16, gpuflat_combine_32, gpuflat_combine_64
//       for stacks of n <= 16 / 32 / 64 frames: the per-thread sort buffer is a fixed-size
//       local array (double[CAP]) and the per-frame flags are two 64-bit registers;
//   gpuflat_combine_n
//       any n: the sort buffer and flags live in a caller-provided global scratch buffer;
//   gpuflat_combine_x16, _x32, _x64, _xn
//       the same with ccdclip, pclip and nkeep (steps 5b, 5c, 5d), which the others refuse
//       (count -1);
//   gpuflat_combine_s16, _s32, _s64, _sn
//       the x kernels that also write every sample's status (step 8; one more argument,
//       `unsigned char *status`, after the list below).
//
// Arguments, in order (C types; pass exactly these widths from the host):
//   const float         *data        [n * npix], frame-major: data[i * npix + p]
//   const unsigned char *mask        [n * npix] or NULL; nonzero = bad sample
//   const double        *scale       [n]
//   const double        *weight      [n] or NULL
//   int                  n           number of frames
//   long long            npix        pixels per frame in this band (row stride of data)
//   long long            p0          first pixel handled by this launch
//   long long            nthreads    pixels handled by this launch: p in [p0, p0 + nthreads)
//   void                *scratch     gpuflat_combine_n only (NULL for the others):
//                                    n * nthreads doubles followed by n * nthreads bytes
//   int                  clip_scaled
//   double               min_value, max_value
//   int                  nlow, nhigh
//   int                  sigma, center, dev
//   double               sigma_low, sigma_high
//   int                  maxiters
//   int                  method
//   int                  ccdclip     1: the clipping width from the CCD noise model
//   int                  nkeep       least survivors the clipping leaves (< 0: most rejected)
//   int                  pclip       0, or pclip's percentile pixel: a signed number of sorted
//                                    positions from the median (_params.pclip_offset)
//   const double        *noise       [3 * n] or NULL (ccdclip only): (rdnoise/gain)^2 of
//                                    every frame, then gain, then snoise
//   double              *image       [npix]  (written at p0 .. p0 + nthreads - 1)
//   double              *uncert      [npix]
//   int                 *count       [npix]
//   unsigned long long  *rejected    [n] or NULL: per frame, the valid samples that did not
//                                    survive are added (atomicAdd; they are few, so the
//                                    atomics stay cheap, and integer sums are exact in any
//                                    order)
//   const unsigned int  *list        NULL, or the pixels to combine: offsets from p0, the
//                                    general list of the fast kernels (kernels/fast.cu)
//   const unsigned int  *counts      with a list: counts[0] is its length (on the device)
// Launch with any 1-D grid covering nthreads threads (surplus threads return at once), or
// with a list any grid (grid-stride over the list).
//
// Each kernel sits in its own `#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_<name>)`
// (here, in level.cu and in convert.cu): nvcc builds all of them into the prebuilt kernels
// (kernels/*.fatbin, `make kernels`); the NVRTC fallback defines GPUFLAT_ONLY and
// GPUFLAT_ONLY_<name> and so compiles only the kernel in use (gpuflat/backends/_kernels.py,
// nvrtc_source).

#define GF_MAD_TO_STD 1.482602218505602

// float -> double without flushing subnormals. CuPy appends -ftz=true to every RawModule
// compile, after gpuflat's own options, and under it NVVM writes (double)x as
// cvt.ftz.f64.f32, which turns a subnormal x into 0 (the numba backend and the CPU shim
// keep it). The conversion is therefore written in PTX without .ftz, which no compiler
// flag can change; the host shim compiles the plain C++ twin. tests/test_cuda_kernels.py
// compiles every kernel through NVRTC with CuPy's option list and checks the machine code
// for .FTZ instructions.
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
__device__ __forceinline__ bool gf_isfinite(float x) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

// Per-thread working storage for n <= CAP frames: the sort buffer, a local array that the
// store only points to (an array indexed at run time lives in local memory, and a struct
// holding it would take its other fields there too), and three flag bits per frame
// (valid; in the extrema window; survivor) in registers.
template <int CAP>
struct LocalStore {
  double *buf;
  unsigned long long valid_bits;
  unsigned long long inwin_bits;
  unsigned long long surv_bits;
  __device__ __forceinline__ void init(int) {
    valid_bits = 0ull;
    inwin_bits = 0ull;
    surv_bits = 0ull;
  }
  __device__ __forceinline__ double &s(int q) { return buf[q]; }
  __device__ __forceinline__ bool valid(int i) const { return (valid_bits >> i) & 1ull; }
  __device__ __forceinline__ bool inwin(int i) const { return (inwin_bits >> i) & 1ull; }
  __device__ __forceinline__ void set_valid(int i) { valid_bits |= 1ull << i; }
  __device__ __forceinline__ void set_inwin(int i, bool on) {
    if (on)
      inwin_bits |= 1ull << i;
    else
      inwin_bits &= ~(1ull << i);
  }
  __device__ __forceinline__ bool surv(int i) const { return (surv_bits >> i) & 1ull; }
  __device__ __forceinline__ void set_surv(int i, bool on) {
    if (on)
      surv_bits |= 1ull << i;
    else
      surv_bits &= ~(1ull << i);
  }
};

// Working storage for any n in global scratch: element j of thread t at [j * stride + t],
// so that neighbouring threads touch neighbouring words.
struct GlobalStore {
  double *sbuf;
  unsigned char *flags;  // bit 0: valid, bit 1: in the window, bit 2: survivor
  long long stride;
  __device__ __forceinline__ void init(int n) {
    for (int i = 0; i < n; ++i) flags[i * stride] = 0;
  }
  __device__ __forceinline__ double &s(int q) { return sbuf[q * stride]; }
  __device__ __forceinline__ bool valid(int i) const { return flags[i * stride] & 1; }
  __device__ __forceinline__ bool inwin(int i) const { return (flags[i * stride] >> 1) & 1; }
  __device__ __forceinline__ void set_valid(int i) { flags[i * stride] |= 1; }
  __device__ __forceinline__ void set_inwin(int i, bool on) {
    unsigned char f = flags[i * stride];
    flags[i * stride] = on ? (unsigned char)(f | 2) : (unsigned char)(f & ~2);
  }
  __device__ __forceinline__ bool surv(int i) const { return (flags[i * stride] >> 2) & 1; }
  __device__ __forceinline__ void set_surv(int i, bool on) {
    unsigned char f = flags[i * stride];
    flags[i * stride] = on ? (unsigned char)(f | 4) : (unsigned char)(f & ~4);
  }
};

struct Params {
  int clip_scaled;
  double min_value, max_value;
  int nlow, nhigh, sigma, center, dev;
  double sigma_low, sigma_high;
  int maxiters, method;
  int ccdclip, nkeep, pclip;
};

// The inputs of one pixel: recomputing x, y and v from the band is cheaper than storing
// them, and gives the same bits every time.
struct Pixel {
  const float *data;
  const double *scale;
  long long npix;
  long long p;
  int clip_scaled;
  __device__ __forceinline__ void values(int i, double &v, double &y) const {
    double x = gf_widen(data[(long long)i * npix + p]);
    y = x * scale[i];
    v = clip_scaled ? y : x;
  }
  __device__ __forceinline__ double y(int i) const {
    return gf_widen(data[(long long)i * npix + p]) * scale[i];
  }
};

// Stable insertion sort of s[0, k): the order of equal values (+0.0 / -0.0) is the input
// order, as in the numba backend.
template <class W>
__device__ __forceinline__ void sort_range(W &w, int k) {
  for (int i = 1; i < k; ++i) {
    double x = w.s(i);
    int j = i - 1;
    while (j >= 0 && w.s(j) > x) {
      w.s(j + 1) = w.s(j);
      --j;
    }
    w.s(j + 1) = x;
  }
}

template <class W>
__device__ __forceinline__ double median_range(W &w, int a, int b) {
  int k = b - a;
  return (w.s(a + (k - 1) / 2) + w.s(a + k / 2)) * 0.5;
}

// Median of |s[q] - med| over the sorted range [a, b), exact: merge the two sorted
// sequences of deviations walking outward from med (the "V walk").
template <class W>
__device__ __forceinline__ double mad_range(W &w, int a, int b, double med) {
  int k = b - a;
  int r1 = (k - 1) / 2;
  int r2 = k / 2;
  int j = a;
  while (j < b && w.s(j) < med) ++j;
  int i = j - 1;
  double d1 = 0.0;
  double d2 = 0.0;
  for (int r = 0; r <= r2; ++r) {
    double dv;
    if (i >= a && (j >= b || med - w.s(i) <= w.s(j) - med)) {
      dv = med - w.s(i);
      --i;
    } else {
      dv = w.s(j) - med;
      ++j;
    }
    if (r == r1) d1 = dv;
    d2 = dv;
  }
  return (d1 + d2) * 0.5;
}

// ccdclip: frame i's bounds about the centre c from the CCD noise model (contract step 5,
// ccdclip); noise = [(rdnoise/gain)^2 x n, gain x n, snoise x n].
__device__ __forceinline__ double noise_bounds(double c, int i, const Pixel &px,
                                               const double *noise, int n, double sigma_low,
                                               double sigma_high, double &lo, double &hi) {
  const double inf = gf_inf();
  double sc = px.clip_scaled ? px.scale[i] : 1.0;
  double r = c / sc;
  if (!(r > 0.0)) r = 0.0;
  double q = r * noise[2 * n + i];
  double sig = sqrt(noise[i] + r / noise[n + i] + q * q) * sc;
  lo = sigma_low == inf ? -inf : c - sigma_low * sig;
  hi = sigma_high == inf ? inf : c + sigma_high * sig;
  return sig;
}

// ccdclip over the k window frames: the surv flags end as the survivors; returns the
// final centre. The sort buffer (the window's sorted values are no longer needed) holds
// the alive values for the median.
template <class W>
__device__ __forceinline__ double ccd_clip(W &w, const Pixel &px, int n, int k,
                                           const Params &pr, const double *noise) {
  for (int i = 0; i < n; ++i) w.set_surv(i, w.inwin(i));
  double c = 0.0;
  double lo, hi;
  int it = 0;
  while (k > 0 && (pr.maxiters < 0 || it < pr.maxiters)) {
    ++it;
    if (pr.center == 0) {
      int q = 0;
      for (int i = 0; i < n; ++i) {
        if (!w.surv(i)) continue;
        double v, y;
        px.values(i, v, y);
        w.s(q) = v;
        ++q;
      }
      sort_range(w, k);
      c = median_range(w, 0, k);
    } else {
      double total = 0.0;
      for (int i = 0; i < n; ++i) {
        if (!w.surv(i)) continue;
        double v, y;
        px.values(i, v, y);
        total += v;
      }
      c = total / (double)k;
    }
    int k2 = 0;
    for (int i = 0; i < n; ++i) {
      if (!w.surv(i)) continue;
      double v, y;
      px.values(i, v, y);
      noise_bounds(c, i, px, noise, n, pr.sigma_low, pr.sigma_high, lo, hi);
      bool keep = !(v < lo || v > hi);
      w.set_surv(i, keep);
      k2 += keep ? 1 : 0;
    }
    if (k2 == k) break;
    k = k2;
  }
  if (it > 0) {  // the final bounds apply to the whole window
    for (int i = 0; i < n; ++i) {
      if (!w.inwin(i)) continue;
      double v, y;
      px.values(i, v, y);
      noise_bounds(c, i, px, noise, n, pr.sigma_low, pr.sigma_high, lo, hi);
      w.set_surv(i, !(v < lo || v > hi));
    }
  }
  return c;
}

// nkeep: the `need` clipped window frames closest to the centre join the survivors, one
// at a time, smallest distance first (|v - c|; divided by the frame's noise-model width
// with ccdclip), ties by frame index.
template <class W>
__device__ __forceinline__ void nkeep_restore(W &w, const Pixel &px, int n, int need, double c,
                                              const Params &pr, const double *noise) {
  for (int r = 0; r < need; ++r) {
    int best = -1;
    double be = 0.0;
    for (int i = 0; i < n; ++i) {
      if (!w.inwin(i) || w.surv(i)) continue;
      double v, y;
      px.values(i, v, y);
      double e = v - c;
      e = e < 0.0 ? -e : e;
      if (pr.ccdclip && e != 0.0) {
        double lo, hi;
        e = e / noise_bounds(c, i, px, noise, n, 1.0, 1.0, lo, hi);
      }
      if (best < 0 || e < be) {
        best = i;
        be = e;
      }
    }
    w.set_surv(best, true);
  }
}

// pclip (contract step 5d) on the sorted window [w0, w1): narrows [af, bf) to the survivors
// and returns the median (0 when the window is too small to clip).
template <class W>
__device__ __forceinline__ double pclip_range(W &w, int w0, int w1, const Params &pr, int &af,
                                              int &bf) {
  const double inf = gf_inf();
  int k = w1 - w0;
  if (k < 3) return 0.0;  // IRAF's MINCLIP
  double med = median_range(w, w0, w1);
  const bool below = pr.pclip < 0;
  int q = below ? (k - 1) / 2 + pr.pclip : k / 2 + pr.pclip;
  q = q < 0 ? 0 : (q > k - 1 ? k - 1 : q);
  double x = w.s(w0 + q);
  double d = below ? med - x : x - med;
  if (d != 0.0) {
    if (pr.sigma_low != inf)
      while (af < bf && (med - w.s(af)) / d >= pr.sigma_low) ++af;
    if (pr.sigma_high != inf)
      while (bf > af && (w.s(bf - 1) - med) / d >= pr.sigma_high) --bf;
  }
  return med;
}

template <bool EXT, class W>
__device__ __forceinline__ void combine_pixel(W &w, const Pixel &px, const unsigned char *mask,
                                              const double *weight, int n, const Params &pr,
                                              double *image, double *uncert, int *count,
                                              unsigned long long *rejected,
                                              const double *noise, unsigned char *status) {
  const long long p = px.p;
  const long long npix = px.npix;
  w.init(n);
  if (!EXT && (pr.ccdclip || pr.nkeep || pr.pclip)) {
    // ccdclip, nkeep and pclip take the gpuflat_combine_x* kernels: an impossible count says so
    count[p] = -1;
    image[p] = gf_nan();
    uncert[p] = gf_nan();
    return;
  }
  // 1-3: valid frames, clip values, sort
  int m = 0;
  for (int i = 0; i < n; ++i) {
    float x = px.data[(long long)i * npix + p];
    double xd = gf_widen(x);
    bool ok = gf_isfinite(x) && xd >= pr.min_value && xd <= pr.max_value;
    if (mask && mask[(long long)i * npix + p] != 0) ok = false;
    if (ok) {
      w.set_valid(i);
      w.set_inwin(i, true);
      w.s(m) = pr.clip_scaled ? xd * px.scale[i] : xd;  // Pixel::values' v, from this load
      ++m;
    }
  }
  sort_range(w, m);

  // 4: extrema window [w0, w1); ranks break ties by frame index. Only the frames equal to
  // the window's end values need a rank: they take the ranks first, first + 1, ... in
  // frame order, first being the sorted position of that value's first occurrence.
  int w0 = pr.nlow;
  int w1 = m - pr.nhigh;
  if (w1 < w0) w1 = w0;
  if (pr.nlow + pr.nhigh > 0 && m > 0) {
    if (w1 == w0) {
      for (int i = 0; i < n; ++i) w.set_inwin(i, false);
    } else {
      double lowv = w.s(w0);
      double highv = w.s(w1 - 1);
      int lo_first = 0;
      while (w.s(lo_first) < lowv) ++lo_first;
      int hi_first = lo_first;
      while (w.s(hi_first) < highv) ++hi_first;
      int lo_seen = 0;
      int hi_seen = 0;
      for (int i = 0; i < n; ++i) {
        if (!w.valid(i)) continue;
        double v, y;
        px.values(i, v, y);
        bool in;
        if (v < lowv || v > highv) {
          in = false;
        } else if (v > lowv && v < highv) {
          in = true;
        } else {
          int rank = (v == lowv) ? lo_first + lo_seen++ : hi_first + hi_seen++;
          in = rank >= w0 && rank < w1;
        }
        w.set_inwin(i, in);
      }
    }
  }

  // 5: clipping, astropy sigma_clip semantics. The survivors are the sorted positions
  // [af, bf) unless `general` (ccdclip, or nkeep restored frames): then the surv flags.
  int af = w0;
  int bf = w1;
  bool general = false;
  double c = 0.0;
  if (EXT && pr.sigma && w1 > w0 && pr.ccdclip) {
    c = ccd_clip(w, px, n, w1 - w0, pr, noise);
    general = true;
  } else if (EXT && pr.sigma && w1 > w0 && pr.pclip) {
    c = pclip_range(w, w0, w1, pr, af, bf);
  } else if (pr.sigma && w1 > w0) {
    const double inf = gf_inf();
    int a = w0;
    int b = w1;
    double lo = -inf;
    double hi = inf;
    int it = 0;
    while (b > a && (pr.maxiters < 0 || it < pr.maxiters)) {
      ++it;
      int k = b - a;
      double med = median_range(w, a, b);
      double mean = 0.0;
      double sd = 0.0;
      if (pr.center == 1 || pr.dev == 1) {
        // members: frames in the window whose value lies within [s[a], s[b-1]]
        double vlo = w.s(a);
        double vhi = w.s(b - 1);
        double sum = 0.0;
        for (int i = 0; i < n; ++i) {
          if (!w.inwin(i)) continue;
          double v, y;
          px.values(i, v, y);
          if (v >= vlo && v <= vhi) sum += v;
        }
        mean = sum / (double)k;
        double ss = 0.0;
        for (int i = 0; i < n; ++i) {
          if (!w.inwin(i)) continue;
          double v, y;
          px.values(i, v, y);
          if (v >= vlo && v <= vhi) {
            double dv = v - mean;
            ss += dv * dv;
          }
        }
        sd = sqrt(ss / (double)k);
      }
      c = pr.center == 0 ? med : mean;
      double d = pr.dev == 0 ? GF_MAD_TO_STD * mad_range(w, a, b, med) : sd;
      lo = pr.sigma_low == inf ? -inf : c - pr.sigma_low * d;
      hi = pr.sigma_high == inf ? inf : c + pr.sigma_high * d;
      int a2 = a;
      while (a2 < b && w.s(a2) < lo) ++a2;
      int b2 = b;
      while (b2 > a2 && w.s(b2 - 1) > hi) --b2;
      if (b2 - a2 == b - a) break;
      a = a2;
      b = b2;
    }
    while (af < bf && w.s(af) < lo) ++af;
    while (bf > af && w.s(bf - 1) > hi) --bf;
  }
  // 5b: nkeep, on the clipping only (it needs the survivors of the range as flags first)
  if (EXT && pr.sigma && w1 > w0 && pr.nkeep != 0) {
    if (!general) {
      for (int i = 0; i < n; ++i) {
        bool on = false;
        if (bf > af && w.inwin(i)) {
          double v, y;
          px.values(i, v, y);
          on = v >= w.s(af) && v <= w.s(bf - 1);
        }
        w.set_surv(i, on);
      }
    }
    int kw = w1 - w0;
    int keep = pr.nkeep > 0 ? (pr.nkeep < kw ? pr.nkeep : kw)
                            : (kw + pr.nkeep > 0 ? kw + pr.nkeep : 0);
    int k = 0;
    for (int i = 0; i < n; ++i) k += w.surv(i) ? 1 : 0;
    if (k < keep) {
      nkeep_restore(w, px, n, keep - k, c, pr, noise);
      general = true;
    }
  }

  // 6: combine the survivors. One pass over the frames (one load each) settles the
  // survivors of a range [af, bf) (the frames in the window with s[af] <= v <= s[bf-1]),
  // counts the rejected and makes the frame-order sums; the squared deviations need the
  // mean first: a second pass.
  const bool ranged = !general;
  const double vlo = bf > af ? w.s(af) : 0.0;
  const double vhi = bf > af ? w.s(bf - 1) : 0.0;
  const bool sums = pr.method != 1;
  int k = 0;
  double sy = 0.0;
  double swy = 0.0;
  double sw = 0.0;
  for (int i = 0; i < n; ++i) {
    bool on;
    double y = 0.0;
    if (ranged) {
      on = false;
      if (bf > af && w.inwin(i)) {
        double v;
        px.values(i, v, y);
        on = v >= vlo && v <= vhi;
      }
      w.set_surv(i, on);
    } else {
      on = w.surv(i);
      if (on && sums) y = px.y(i);
    }
    k += on ? 1 : 0;
    if (rejected && w.valid(i) && !on) atomicAdd(&rejected[i], 1ull);
    // step 8: the sample's status (the gpuflat_combine_s* kernels; NULL in the others)
    if (status) status[(long long)i * npix + p] = w.valid(i) ? (on ? 1 : 2) : 0;
    if (on && sums) {
      sy += y;
      if (weight) {
        swy += weight[i] * y;
        sw += weight[i];
      }
    }
  }
  count[p] = k;
  if (k == 0) {
    image[p] = gf_nan();
    uncert[p] = gf_nan();
    return;
  }
  if (pr.method == 1) {
    double med;
    double mad;
    if (pr.clip_scaled && !general) {
      med = median_range(w, af, bf);
      mad = mad_range(w, af, bf, med);
    } else {
      // the sorted clip values are no longer needed: reuse the buffer for the survivors' y
      int q = 0;
      for (int i = 0; i < n; ++i) {
        if (w.surv(i)) {
          w.s(q) = px.y(i);
          ++q;
        }
      }
      sort_range(w, k);
      med = median_range(w, 0, k);
      mad = mad_range(w, 0, k, med);
    }
    image[p] = med;
    uncert[p] = GF_MAD_TO_STD * mad / sqrt((double)k);
    return;
  }
  double my = sy / (double)k;
  double ssy = 0.0;
  for (int i = 0; i < n; ++i) {
    if (!w.surv(i)) continue;
    double dy = px.y(i) - my;
    ssy += dy * dy;
  }
  double sd = sqrt(ssy / (double)k);
  if (pr.method == 0) {
    image[p] = weight ? swy / sw : my;
    uncert[p] = sd / sqrt((double)k);
  } else {
    image[p] = weight ? swy : sy;
    uncert[p] = sd * sqrt((double)k);
  }
}

#define GF_COMBINE_ARGS                                                                     \
  const float *__restrict__ data, const unsigned char *__restrict__ mask,                  \
      const double *__restrict__ scale, const double *__restrict__ weight, int n,          \
      long long npix, long long p0, long long nthreads, void *scratch, int clip_scaled,    \
      double min_value, double max_value, int nlow, int nhigh, int sigma, int center,      \
      int dev, double sigma_low, double sigma_high, int maxiters, int method, int ccdclip,  \
      int nkeep, int pclip, const double *__restrict__ noise, double *__restrict__ image,  \
      double *__restrict__ uncert, int *__restrict__ count,                                \
      unsigned long long *__restrict__ rejected, const unsigned int *__restrict__ list,      \
      const unsigned int *__restrict__ counts

// Without a list, thread t takes pixel p0 + t (t < nthreads). With one (the fast kernels'
// general list: its first counts[0] entries), the grid strides over the list's entries j,
// pixel p0 + list[j] (counts[0] <= nthreads, as gpuflat_combine_n's scratch has nthreads
// slots).
#define GF_COMBINE_SETUP                                                                    \
  const long long len = list ? (long long)counts[0] : nthreads;                             \
  const long long step = list ? (long long)gridDim.x * blockDim.x : nthreads;               \
  Params pr{clip_scaled, min_value, max_value, nlow, nhigh, sigma,                          \
            center,      dev,       sigma_low, sigma_high, maxiters, method,                \
            ccdclip,     nkeep,     pclip};                                                 \
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < len; t += step) { \
    Pixel px{data, scale, npix, p0 + (list ? (long long)list[t] : t), clip_scaled};

template <int CAP, bool EXT>
__device__ __forceinline__ void combine_local(GF_COMBINE_ARGS, unsigned char *status) {
  (void)scratch;
  GF_COMBINE_SETUP
    double buf[CAP];
    LocalStore<CAP> w{buf, 0ull, 0ull, 0ull};
    combine_pixel<EXT>(w, px, mask, weight, n, pr, image, uncert, count, rejected, noise,
                       status);
  }
}

template <bool EXT>
__device__ __forceinline__ void combine_global(GF_COMBINE_ARGS, unsigned char *status) {
  GF_COMBINE_SETUP
    GlobalStore w{(double *)scratch + t,
                  (unsigned char *)((double *)scratch + (long long)n * nthreads) + t, nthreads};
    combine_pixel<EXT>(w, px, mask, weight, n, pr, image, uncert, count, rejected, noise,
                       status);
  }
}

#define GF_COMBINE_NAMES                                                                    \
  data, mask, scale, weight, n, npix, p0, nthreads, scratch, clip_scaled, min_value,        \
      max_value, nlow, nhigh, sigma, center, dev, sigma_low, sigma_high, maxiters, method,  \
      ccdclip, nkeep, pclip, noise, image, uncert, count, rejected, list, counts
// the kernels without statuses: a constant NULL, which inlining folds away
#define GF_COMBINE_CALL (GF_COMBINE_NAMES, nullptr)
// the gpuflat_combine_s* kernels: GF_COMBINE_ARGS and then
//   unsigned char *status  [n * npix]: status[i * npix + p] = 0 (sample not valid, step 1),
//                          1 (a survivor), 2 (valid, not a survivor); step 8
#define GF_STATUS_CALL (GF_COMBINE_NAMES, status)

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_16)
extern "C" __global__ void gpuflat_combine_16(GF_COMBINE_ARGS) {
  combine_local<16, false> GF_COMBINE_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_32)
extern "C" __global__ void gpuflat_combine_32(GF_COMBINE_ARGS) {
  combine_local<32, false> GF_COMBINE_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_64)
extern "C" __global__ void gpuflat_combine_64(GF_COMBINE_ARGS) {
  combine_local<64, false> GF_COMBINE_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_n)
extern "C" __global__ void gpuflat_combine_n(GF_COMBINE_ARGS) {
  combine_global<false> GF_COMBINE_CALL;
}
#endif

// ccdclip, pclip and nkeep: the same kernels with steps 5b-5d compiled in (they cost registers
// the guide's path should not pay for)
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_x16)
extern "C" __global__ void gpuflat_combine_x16(GF_COMBINE_ARGS) {
  combine_local<16, true> GF_COMBINE_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_x32)
extern "C" __global__ void gpuflat_combine_x32(GF_COMBINE_ARGS) {
  combine_local<32, true> GF_COMBINE_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_x64)
extern "C" __global__ void gpuflat_combine_x64(GF_COMBINE_ARGS) {
  combine_local<64, true> GF_COMBINE_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_xn)
extern "C" __global__ void gpuflat_combine_xn(GF_COMBINE_ARGS) {
  combine_global<true> GF_COMBINE_CALL;
}
#endif

// every sample's status too (step 8, for the grow: gpuflat/_grow.py), with ccdclip, nkeep
// and pclip
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_s16)
extern "C" __global__ void gpuflat_combine_s16(GF_COMBINE_ARGS,
                                               unsigned char *__restrict__ status) {
  combine_local<16, true> GF_STATUS_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_s32)
extern "C" __global__ void gpuflat_combine_s32(GF_COMBINE_ARGS,
                                               unsigned char *__restrict__ status) {
  combine_local<32, true> GF_STATUS_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_s64)
extern "C" __global__ void gpuflat_combine_s64(GF_COMBINE_ARGS,
                                               unsigned char *__restrict__ status) {
  combine_local<64, true> GF_STATUS_CALL;
}
#endif
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_combine_sn)
extern "C" __global__ void gpuflat_combine_sn(GF_COMBINE_ARGS,
                                              unsigned char *__restrict__ status) {
  combine_global<true> GF_STATUS_CALL;
}
#endif

#ifdef GPUFLAT_HOST_SHIM
GPUFLAT_HOST_ENTRY(gpuflat_combine_16)
GPUFLAT_HOST_ENTRY(gpuflat_combine_32)
GPUFLAT_HOST_ENTRY(gpuflat_combine_64)
GPUFLAT_HOST_ENTRY(gpuflat_combine_n)
GPUFLAT_HOST_ENTRY(gpuflat_combine_x16)
GPUFLAT_HOST_ENTRY(gpuflat_combine_x32)
GPUFLAT_HOST_ENTRY(gpuflat_combine_x64)
GPUFLAT_HOST_ENTRY(gpuflat_combine_xn)
GPUFLAT_HOST_ENTRY(gpuflat_combine_s16)
GPUFLAT_HOST_ENTRY(gpuflat_combine_s32)
GPUFLAT_HOST_ENTRY(gpuflat_combine_s64)
GPUFLAT_HOST_ENTRY(gpuflat_combine_sn)
#endif
