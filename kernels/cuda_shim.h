// cuda_shim.h: build gpuflat's CUDA kernels with a host C++ compiler and run them on the CPU.
//
// This header is for tests only. It is force-included by the test harness:
//
//   g++ -O2 -std=c++17 -ffp-contract=off -fPIC -shared -DGPUFLAT_HOST_SHIM
//       -include kernels/cuda_shim.h -x c++ kernels/combine.cu ...
//
// and makes the very same .cu source compile as C++: the CUDA keywords become nothing,
// the built-in index variables become (thread-local) globals, and the device intrinsics
// the kernels use get exact host equivalents. The kernels in gpuflat never let threads
// talk to each other (no shared memory, no __syncthreads, no warp functions), so running
// every thread of the grid one after the other is a faithful execution of the launch;
// atomics are plain read-modify-writes because nothing runs concurrently.
//
// Each .cu file ends with a block
//
//   #ifdef GPUFLAT_HOST_SHIM
//   GPUFLAT_HOST_ENTRY(gpuflat_some_kernel)
//   #endif
//
// which defines `extern "C" void gpuflat_host_gpuflat_some_kernel(const unsigned *grid,
// const unsigned *block, void **args)`: grid and block are 3 numbers each and args holds
// one pointer per kernel parameter, pointing at the argument's value, exactly as for
// cudaLaunchKernel / cuLaunchKernel. ctypes calls that entry.
#ifndef GPUFLAT_CUDA_SHIM_H
#define GPUFLAT_CUDA_SHIM_H

#ifdef __CUDACC__
#error "cuda_shim.h is for host C++ compilers only"
#endif

#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

using std::fabs;
using std::sqrt;

inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}
inline long long __double_as_longlong(double d) {
  long long v;
  std::memcpy(&v, &d, sizeof v);
  return v;
}
inline float __uint_as_float(unsigned int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int v;
  std::memcpy(&v, &f, sizeof v);
  return v;
}

// Sequential execution: an atomic is an ordinary read-modify-write returning the old value.
template <typename T>
inline T atomicAdd(T *address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}

namespace gpuflat_shim {

template <typename... A, std::size_t... I>
void run_grid(void (*kernel)(A...), const unsigned *grid, const unsigned *block, void **args,
              std::index_sequence<I...>) {
  gridDim = dim3{grid[0], grid[1], grid[2]};
  blockDim = dim3{block[0], block[1], block[2]};
  for (unsigned bz = 0; bz < grid[2]; ++bz)
    for (unsigned by = 0; by < grid[1]; ++by)
      for (unsigned bx = 0; bx < grid[0]; ++bx) {
        blockIdx = uint3{bx, by, bz};
        for (unsigned tz = 0; tz < block[2]; ++tz)
          for (unsigned ty = 0; ty < block[1]; ++ty)
            for (unsigned tx = 0; tx < block[0]; ++tx) {
              threadIdx = uint3{tx, ty, tz};
              kernel(*static_cast<std::remove_reference_t<A> *>(args[I])...);
            }
      }
}

template <typename... A>
void launch(void (*kernel)(A...), const unsigned *grid, const unsigned *block, void **args) {
  run_grid(kernel, grid, block, args, std::index_sequence_for<A...>{});
}

}  // namespace gpuflat_shim

#define GPUFLAT_HOST_ENTRY(kernel)                                                      \
  extern "C" void gpuflat_host_##kernel(const unsigned *grid, const unsigned *block,    \
                                        void **args) {                                  \
    gpuflat_shim::launch(kernel, grid, block, args);                                    \
  }

#endif  // GPUFLAT_CUDA_SHIM_H
