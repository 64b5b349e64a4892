// convert.cu: raw FITS image bytes (big-endian) -> float32, as gpuflat reads them on the CPU.
//
// The value written is exactly what `gpuflat._frames.scale_raw` gives for a float32 output
// (the values of `astropy.io.fits.getdata`, uint=True): the host decides how, with the same
// rules (gpuflat/backends/_cuda.py, `convert_args`), and passes it as `mode`:
//   mode & 3 == 0  direct:   BSCALE 1 and BZERO 0: the stored value rounded once to float32;
//   mode & 3 == 1  unsigned: the unsigned conventions (BSCALE 1; BZERO -128 for BITPIX 8,
//                            2**(BITPIX-1) otherwise): stored value + BZERO, an exact
//                            integer (flip of the top bit), rounded once to float32;
//   mode & 3 == 2  float32:  8/16-bit integers and BITPIX -32: f = (float)stored;
//                            f *= BSCALE (mode & 4); f += BZERO (mode & 8), in float32;
//   mode & 3 == 3  float64:  32/64-bit integers and BITPIX -64: the same in float64, then
//                            rounded to float32.
// BSCALE and BZERO arrive already rounded to the working precision (a float32 value passed
// as a double for mode 2). Integer pixels whose stored value equals `blank` become NaN when
// `has_blank`. Compile without fused multiply-add (--fmad=false), so that raw * BSCALE +
// BZERO is two roundings, as in NumPy; float32 arithmetic goes through PTX without .ftz,
// so subnormals survive CuPy's -ftz=true.
//
// Every kernel: (const unsigned char *raw, long long count, int mode, double bscale,
//                double bzero, int has_blank, long long blank, float *out),
// one thread per value (any 1-D grid covering count threads); raw holds count big-endian
// values of the kernel's width (gpuflat_convert_u8, _i16, _i32, _i64, _f32, _f64).
//
// Each kernel is guarded by GPUFLAT_ONLY / GPUFLAT_ONLY_<name>, so that the NVRTC fallback
// compiles only the kernel in use (see combine.cu).

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

__device__ __forceinline__ float gf_scale_f32(float f, int mode, double bscale, double bzero) {
  if (mode & 4) f = gf_mul_f32(f, gf_narrow(bscale));
  if (mode & 8) f = gf_add_f32(f, gf_narrow(bzero));
  return f;
}

__device__ __forceinline__ float gf_scale_f64(double d, int mode, double bscale, double bzero) {
  if (mode & 4) d = d * bscale;
  if (mode & 8) d = d + bzero;
  return gf_narrow(d);
}

// An integer pixel: `v` its stored value, `u` its unsigned-convention value (v + BZERO,
// exact), `wide` whether u needs 64 bits unsigned.
__device__ __forceinline__ float gf_from_int(long long v, unsigned long long u, bool wide,
                                             int mode, double bscale, double bzero,
                                             int has_blank, long long blank) {
  if (has_blank && v == blank) return __uint_as_float(0x7fc00000u);
  switch (mode & 3) {
    case 0:
      return (float)v;  // integer -> float32, one rounding; never subnormal
    case 1:
      return wide ? (float)u : (float)(long long)u;
    case 2:
      return gf_scale_f32((float)v, mode, bscale, bzero);  // (float)v exact: <= 16 bits
    default:
      return gf_scale_f64((double)v, mode, bscale, bzero);
  }
}

#define GF_CONVERT_ARGS                                                                   \
  const unsigned char *raw, long long e, int mode, double bscale, double bzero,            \
      int has_blank, long long blank

__device__ __forceinline__ float gf_convert_u8(GF_CONVERT_ARGS) {
  unsigned int u = raw[e];
  long long flipped = (long long)(signed char)(unsigned char)(u ^ 0x80u);  // BZERO -128
  return gf_from_int((long long)u, (unsigned long long)flipped, false, mode, bscale, bzero,
                     has_blank, blank);
}

__device__ __forceinline__ float gf_convert_i16(GF_CONVERT_ARGS) {
  unsigned int u = gf_be16(raw + 2 * e);
  long long v = (long long)u - (long long)((u & 0x8000u) << 1);  // two's complement int16
  return gf_from_int(v, u ^ 0x8000u, false, mode, bscale, bzero, has_blank, blank);
}

__device__ __forceinline__ float gf_convert_i32(GF_CONVERT_ARGS) {
  unsigned int u = gf_be32(raw + 4 * e);
  long long v = (long long)u - ((u & 0x80000000u) ? 4294967296LL : 0LL);
  return gf_from_int(v, u ^ 0x80000000u, false, mode, bscale, bzero, has_blank, blank);
}

__device__ __forceinline__ float gf_convert_i64(GF_CONVERT_ARGS) {
  const unsigned char *b = raw + 8 * e;
  unsigned long long u = ((unsigned long long)gf_be32(b) << 32) | gf_be32(b + 4);
  return gf_from_int((long long)u, u ^ 0x8000000000000000ull, true, mode, bscale, bzero,
                     has_blank, blank);
}

__device__ __forceinline__ float gf_convert_f32(const unsigned char *raw, long long e, int mode,
                                              double bscale, double bzero, int, long long) {
  float f = __uint_as_float(gf_be32(raw + 4 * e));
  return (mode & 3) == 0 ? f : gf_scale_f32(f, mode, bscale, bzero);
}

__device__ __forceinline__ float gf_convert_f64(const unsigned char *raw, long long e, int mode,
                                              double bscale, double bzero, int, long long) {
  const unsigned char *b = raw + 8 * e;
  unsigned long long bits = ((unsigned long long)gf_be32(b) << 32) | gf_be32(b + 4);
  return gf_scale_f64(__longlong_as_double((long long)bits), mode, bscale, bzero);
}

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_convert_u8)
extern "C" __global__ void gpuflat_convert_u8(const unsigned char *__restrict__ raw,
                                              long long count, int mode, double bscale,
                                              double bzero, int has_blank, long long blank,
                                              float *__restrict__ out) {
  long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < count) out[e] = gf_convert_u8(raw, e, mode, bscale, bzero, has_blank, blank);
}
#endif

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_convert_i16)
extern "C" __global__ void gpuflat_convert_i16(const unsigned char *__restrict__ raw,
                                              long long count, int mode, double bscale,
                                              double bzero, int has_blank, long long blank,
                                              float *__restrict__ out) {
  long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < count) out[e] = gf_convert_i16(raw, e, mode, bscale, bzero, has_blank, blank);
}
#endif

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_convert_i32)
extern "C" __global__ void gpuflat_convert_i32(const unsigned char *__restrict__ raw,
                                              long long count, int mode, double bscale,
                                              double bzero, int has_blank, long long blank,
                                              float *__restrict__ out) {
  long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < count) out[e] = gf_convert_i32(raw, e, mode, bscale, bzero, has_blank, blank);
}
#endif

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_convert_i64)
extern "C" __global__ void gpuflat_convert_i64(const unsigned char *__restrict__ raw,
                                              long long count, int mode, double bscale,
                                              double bzero, int has_blank, long long blank,
                                              float *__restrict__ out) {
  long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < count) out[e] = gf_convert_i64(raw, e, mode, bscale, bzero, has_blank, blank);
}
#endif

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_convert_f32)
extern "C" __global__ void gpuflat_convert_f32(const unsigned char *__restrict__ raw,
                                              long long count, int mode, double bscale,
                                              double bzero, int has_blank, long long blank,
                                              float *__restrict__ out) {
  long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < count) out[e] = gf_convert_f32(raw, e, mode, bscale, bzero, has_blank, blank);
}
#endif

#if !defined(GPUFLAT_ONLY) || defined(GPUFLAT_ONLY_gpuflat_convert_f64)
extern "C" __global__ void gpuflat_convert_f64(const unsigned char *__restrict__ raw,
                                              long long count, int mode, double bscale,
                                              double bzero, int has_blank, long long blank,
                                              float *__restrict__ out) {
  long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < count) out[e] = gf_convert_f64(raw, e, mode, bscale, bzero, has_blank, blank);
}
#endif

#ifdef GPUFLAT_HOST_SHIM
GPUFLAT_HOST_ENTRY(gpuflat_convert_u8)
GPUFLAT_HOST_ENTRY(gpuflat_convert_i16)
GPUFLAT_HOST_ENTRY(gpuflat_convert_i32)
GPUFLAT_HOST_ENTRY(gpuflat_convert_i64)
GPUFLAT_HOST_ENTRY(gpuflat_convert_f32)
GPUFLAT_HOST_ENTRY(gpuflat_convert_f64)
#endif
