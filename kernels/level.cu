// level.cu: the level of one whole frame (docs/kernel-contract.md, "Frame level").
//
// Median: exact, by radix select on order-preserving 32-bit keys of the float32 values,
// four passes of 8 bits. Both middle ranks, (k-1)/2 and k/2, are selected together; the
// host then returns ((double)lo + (double)hi) * 0.5. Values that are not finite, or
// masked, are left out.
//
//   state: unsigned int[8], zero on entry:
//     [0] key prefix of rank lo   [1] key prefix of rank hi
//     [2] rank lo within prefix   [3] rank hi within prefix
//     [4] k, the number of usable values (set by the first select)
//     [5], [6] the ranks [2], [3] as the select reads them (set by the reduce)
//   hist:  unsigned int[2 * GF_COPIES * 256], zero on entry (each reduce zeroes it again):
//     GF_COPIES sub-histograms for rank lo, then GF_COPIES for rank hi; a block adds into
//     sub-histogram blockIdx.x % GF_COPIES, which spreads the atomics of a stack of nearly
//     equal values over many addresses.
//   tot:   unsigned int[512]: per digit, the totals for rank lo, then for rank hi.
//
//   for shift in 24, 16, 8, 0:
//     gpuflat_level_hist(const float *data, const unsigned char *mask /* or NULL */,
//                        long long npix, int shift, const unsigned int *state,
//                        unsigned int *hist)                  any 1-D grid (grid-stride)
//     gpuflat_level_reduce(unsigned int *state, unsigned int *hist, unsigned int *tot)
//                                                             grid 1, block 256
//     gpuflat_level_select(unsigned int *state, const unsigned int *tot, int shift)
//                                                             grid 1, block 256
//   then read state[0], state[1], state[4] and turn the keys back into floats.
//
// Mean: gpuflat_level_rowsum(const float *data, const unsigned char *mask /* or NULL */,
//                            long long rows, long long cols, double *sums,
//                            long long *counts)
//   one thread per row: the float64 sum of the row's usable values in column order, and
//   their count. The host adds the row sums in row order.
//
// Each kernel is guarded by GPUFLAT_ONLY / GPUFLAT_ONLY_<name>, so that the NVRTC fallback
// compiles only the kernel in use (see combine.cu).

#define GF_COPIES 32

// float -> double without flushing subnormals, whatever -ftz the compile gets (CuPy appends
// -ftz=true; see gf_widen in combine.cu). PTX without .ftz; plain C++ in the host shim.
__device__ __forceinline__ double gf_widen(float x) {
#ifdef __CUDA_ARCH__
  double d;
  asm("cvt.f64.f32 %0, %1;" : "=d"(d) : "f"(x));
  return d;
#else
  return (double)x;
#endif
}

__device__ __forceinline__ bool gf_usable(float x, const unsigned char *mask, long long e) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u && !(mask && mask[e] != 0);
}

// Monotone map float32 -> uint32: a < b (as floats, with -0 < +0) iff key(a) < key(b).
__device__ __forceinline__ unsigned int gf_key(float x) {
  unsigned int u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_level_hist)
extern "C" __global__ void gpuflat_level_hist(const float *__restrict__ data,
                                              const unsigned char *__restrict__ mask,
                                              long long npix, int shift,
                                              const unsigned int *__restrict__ state,
                                              unsigned int *__restrict__ hist) {
  const unsigned int plo = state[0];
  const unsigned int phi = state[1];
  const bool same = plo == phi;
  // the bits above this digit must equal the prefix (none on the first pass)
  const unsigned int high = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
  unsigned int *hlo = hist + (blockIdx.x % GF_COPIES) * 256;
  unsigned int *hhi = hlo + GF_COPIES * 256;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < npix; e += step) {
    float x = data[e];
    if (!gf_usable(x, mask, e)) continue;
    unsigned int key = gf_key(x);
    unsigned int digit = (key >> shift) & 255u;
    if (((key ^ plo) & high) == 0u) atomicAdd(hlo + digit, 1u);
    if (!same && ((key ^ phi) & high) == 0u) atomicAdd(hhi + digit, 1u);
  }
}
#endif

// Between two hist passes, one block of 256 threads, thread b for digit b; no thread
// reads what another writes in the same launch (the CPU build runs threads one by one).
//
// gpuflat_level_reduce: the totals of digit b over the GF_COPIES sub-histograms, for rank
// lo (tot[b]) and rank hi (tot[256 + b]: lo's while the prefixes are equal, as the hist
// pass counted them), the sub-histograms zeroed for the next pass; thread 0 keeps the
// ranks of this digit (state[2], state[3]) in state[5], state[6] for the select.
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_level_reduce)
extern "C" __global__ void gpuflat_level_reduce(unsigned int *__restrict__ state,
                                                unsigned int *__restrict__ hist,
                                                unsigned int *__restrict__ tot) {
  const unsigned int b = threadIdx.x;
  if (blockIdx.x != 0 || b >= 256u) return;
  const bool same = state[0] == state[1];
  unsigned int lo = 0u;
  unsigned int hi = 0u;
  for (int j = 0; j < GF_COPIES; ++j) {
    lo += hist[j * 256 + b];
    hi += hist[(GF_COPIES + j) * 256 + b];
    hist[j * 256 + b] = 0u;
    hist[(GF_COPIES + j) * 256 + b] = 0u;
  }
  tot[b] = lo;
  tot[256 + b] = same ? lo : hi;
  if (b == 0u) {
    state[5] = state[2];
    state[6] = state[3];
  }
}
#endif

// gpuflat_level_select: thread b adds the totals below its digit (an exclusive scan, each
// thread its own) and, when a rank falls into its digit, extends that rank's prefix by
// the digit and keeps the rank within it. On the first digit (shift 24) every thread
// counts the usable values k itself (the sum of all totals) and the ranks are (k-1)/2
// and k/2; thread 0 stores k.
#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_level_select)
extern "C" __global__ void gpuflat_level_select(unsigned int *__restrict__ state,
                                                const unsigned int *__restrict__ tot,
                                                int shift) {
  const unsigned int b = threadIdx.x;
  if (blockIdx.x != 0 || b >= 256u) return;
  unsigned int below_lo = 0u;
  unsigned int below_hi = 0u;
  unsigned int all = 0u;
  for (unsigned int j = 0; j < 256u; ++j) {
    const unsigned int c = tot[j];
    below_lo += j < b ? c : 0u;
    below_hi += j < b ? tot[256 + j] : 0u;
    all += c;
  }
  unsigned int k;
  unsigned int rlo;
  unsigned int rhi;
  if (shift == 24) {
    k = all;
    rlo = k ? (k - 1u) / 2u : 0u;
    rhi = k / 2u;
    if (b == 0u) state[4] = k;
  } else {
    k = state[4];
    rlo = state[5];
    rhi = state[6];
  }
  if (k == 0u) return;
  if (rlo >= below_lo && rlo - below_lo < tot[b]) {
    state[0] |= b << shift;
    state[2] = rlo - below_lo;
  }
  if (rhi >= below_hi && rhi - below_hi < tot[256 + b]) {
    state[1] |= b << shift;
    state[3] = rhi - below_hi;
  }
}
#endif

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_level_rowsum)
extern "C" __global__ void gpuflat_level_rowsum(const float *__restrict__ data,
                                                const unsigned char *__restrict__ mask,
                                                long long rows, long long cols,
                                                double *__restrict__ sums,
                                                long long *__restrict__ counts) {
  long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  double s = 0.0;
  long long k = 0;
  for (long long c = 0; c < cols; ++c) {
    long long e = r * cols + c;
    float x = data[e];
    if (gf_usable(x, mask, e)) {
      s += gf_widen(x);
      ++k;
    }
  }
  sums[r] = s;
  counts[r] = k;
}
#endif

#ifdef GPUFLAT_HOST_SHIM
GPUFLAT_HOST_ENTRY(gpuflat_level_hist)
GPUFLAT_HOST_ENTRY(gpuflat_level_reduce)
GPUFLAT_HOST_ENTRY(gpuflat_level_select)
GPUFLAT_HOST_ENTRY(gpuflat_level_rowsum)
#endif
