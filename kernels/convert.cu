// convert.cu: raw FITS image bytes (big-endian) -> float32, as astropy.io.fits reads them.
//
// The value written is the one `astropy.io.fits` gives for `hdu.data.astype(np.float32)`
// (astropy 6-8, uint=True, no BLANK):
//   BITPIX 16, BSCALE 1, BZERO 32768: uint16 (pseudo-unsigned), exactly;
//   BITPIX 16 otherwise:              float32 arithmetic: f = (float)raw;
//                                     f *= (float)BSCALE if BSCALE != 1;
//                                     f += (float)BZERO  if BZERO  != 0;
//   BITPIX 32, BSCALE 1, BZERO 2^31:  uint32 (pseudo-unsigned), rounded to float32;
//   BITPIX 32 otherwise:              float64 arithmetic (raw * BSCALE, + BZERO, each only
//                                     when not the identity), rounded to float32;
//   BITPIX -32:                       float32 arithmetic as for BITPIX 16;
//   BITPIX -64:                       float64 arithmetic, rounded to float32.
// Compile without fused multiply-add (--fmad=false), so that raw * BSCALE + BZERO is two
// roundings, as in NumPy.
//
// Every kernel: (const unsigned char *raw, long long count, double bscale, double bzero,
//                float *out), one thread per value (any 1-D grid covering count threads);
// raw holds count big-endian values of the kernel's width.

__device__ __forceinline__ unsigned int gf_be16(const unsigned char *b) {
  return ((unsigned int)b[0] << 8) | (unsigned int)b[1];
}
__device__ __forceinline__ unsigned int gf_be32(const unsigned char *b) {
  return ((unsigned int)b[0] << 24) | ((unsigned int)b[1] << 16) | ((unsigned int)b[2] << 8) |
         (unsigned int)b[3];
}

// float32 arithmetic that keeps subnormals whatever -ftz the compile gets: CuPy appends
// -ftz=true to every RawModule compile, after gpuflat's own options, and under it NVVM
// writes f * g, f + g and (float)d with .ftz, flushing subnormal inputs and results to 0
// (NumPy, and so astropy, keep them). PTX without .ftz cannot be changed by any flag; the
// host shim compiles the plain C++ twins (-ffp-contract=off, no fast-math).
__device__ __forceinline__ float gf_narrow(double d) {  // round to nearest float32
#ifdef __CUDA_ARCH__
  float f;
  asm("cvt.rn.f32.f64 %0, %1;" : "=f"(f) : "d"(d));
  return f;
#else
  return (float)d;
#endif
}

__device__ __forceinline__ float gf_mul_f32(float a, float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a * b;
#endif
}

__device__ __forceinline__ float gf_add_f32(float a, float b) {
#ifdef __CUDA_ARCH__
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a + b;
#endif
}

__device__ __forceinline__ float gf_scale_f32(float f, double bscale, double bzero) {
  if (bscale != 1.0) f = gf_mul_f32(f, gf_narrow(bscale));
  if (bzero != 0.0) f = gf_add_f32(f, gf_narrow(bzero));
  return f;
}

__device__ __forceinline__ float gf_scale_f64(double d, double bscale, double bzero) {
  if (bscale != 1.0) d = d * bscale;
  if (bzero != 0.0) d = d + bzero;
  return gf_narrow(d);
}

#define GF_CONVERT_INDEX                                                     \
  long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;            \
  if (e >= count) return;

extern "C" __global__ void gpuflat_convert_i16(const unsigned char *__restrict__ raw,
                                               long long count, double bscale, double bzero,
                                               float *__restrict__ out) {
  GF_CONVERT_INDEX
  unsigned int u = gf_be16(raw + 2 * e);
  if (bscale == 1.0 && bzero == 32768.0) {
    out[e] = (float)(u ^ 0x8000u);
  } else {
    int v = (int)u - (int)((u & 0x8000u) << 1);  // two's complement int16
    out[e] = gf_scale_f32((float)v, bscale, bzero);
  }
}

extern "C" __global__ void gpuflat_convert_i32(const unsigned char *__restrict__ raw,
                                               long long count, double bscale, double bzero,
                                               float *__restrict__ out) {
  GF_CONVERT_INDEX
  unsigned int u = gf_be32(raw + 4 * e);
  if (bscale == 1.0 && bzero == 2147483648.0) {
    out[e] = (float)(u ^ 0x80000000u);
  } else {
    long long v = (long long)u - (long long)((u & 0x80000000u) ? 4294967296LL : 0LL);
    out[e] = gf_scale_f64((double)v, bscale, bzero);
  }
}

extern "C" __global__ void gpuflat_convert_f32(const unsigned char *__restrict__ raw,
                                               long long count, double bscale, double bzero,
                                               float *__restrict__ out) {
  GF_CONVERT_INDEX
  out[e] = gf_scale_f32(__uint_as_float(gf_be32(raw + 4 * e)), bscale, bzero);
}

extern "C" __global__ void gpuflat_convert_f64(const unsigned char *__restrict__ raw,
                                               long long count, double bscale, double bzero,
                                               float *__restrict__ out) {
  GF_CONVERT_INDEX
  const unsigned char *b = raw + 8 * e;
  unsigned long long bits = ((unsigned long long)gf_be32(b) << 32) | gf_be32(b + 4);
  out[e] = gf_scale_f64(__longlong_as_double((long long)bits), bscale, bzero);
}

#ifdef GPUFLAT_HOST_SHIM
GPUFLAT_HOST_ENTRY(gpuflat_convert_i16)
GPUFLAT_HOST_ENTRY(gpuflat_convert_i32)
GPUFLAT_HOST_ENTRY(gpuflat_convert_f64)
GPUFLAT_HOST_ENTRY(gpuflat_convert_f32)
#endif
