// The parts of the CUDA extension that are not update kernels: step-counter
// increments, the bandwidth probe, device schedule evaluation, device queries.
#include "cuda/multi_tensor.cuh"

namespace fastlr {
namespace cuda {
namespace detail {
namespace {

__global__ void increment_kernel(StepList l, const float* found_inf) {
  if (skipped(found_inf)) return;
  for (int i = threadIdx.x; i < l.n; i += blockDim.x) {
    void* p = l.ptr[i];
    switch (l.dtype) {
      case 0: *static_cast<float*>(p) += 1.0f; break;
      case 1: *static_cast<double*>(p) += 1.0; break;
      case 2: *static_cast<int32_t*>(p) += 1; break;
      default: *static_cast<int64_t*>(p) += 1; break;
    }
  }
}

__global__ void __launch_bounds__(kThreads) copy_kernel(const uint4* __restrict__ src,
                                                        uint4* __restrict__ dst, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = src[i];
}

__global__ void schedule_kernel(const double* enc, const int64_t* t, double* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = fastlr::schedule_at(enc, t[i]);
}

}  // namespace

int sm_count(int device) {
  static int cache[64] = {};
  if (device < 0 || device >= 64) throw std::invalid_argument("device index out of range");
  if (cache[device] == 0)
    check(cudaDeviceGetAttribute(&cache[device], cudaDevAttrMultiProcessorCount, device),
          "multiprocessor count");
  return cache[device];
}

void set_device(int device) {
  int current = -1;
  check(cudaGetDevice(&current), "cudaGetDevice");
  if (current != device) check(cudaSetDevice(device), "cudaSetDevice");
}

void launch_increments(const Common& c) {
  if (c.n_increment <= 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(c.stream);
  for (int64_t at = 0; at < c.n_increment; at += kMaxIncrements) {
    StepList l;
    l.n = static_cast<int>(std::min<int64_t>(kMaxIncrements, c.n_increment - at));
    l.dtype = static_cast<int>(c.step_dtype);
    for (int k = 0; k < l.n; ++k) l.ptr[k] = c.increment[at + k];
    increment_kernel<<<1, 256, 0, stream>>>(l, c.found_inf);
    check(cudaGetLastError(), "increment launch");
  }
}

}  // namespace detail

using detail::check;
using detail::kThreads;
using detail::sm_count;
using detail::set_device;

void copy(int device, void* stream, void* dst, const void* src, int64_t nbytes) {
  set_device(device);
  const int64_t n = nbytes / 16;
  if (n == 0) return;
  int occupancy = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, detail::copy_kernel, kThreads, 0),
        "occupancy");
  const int64_t slots = static_cast<int64_t>(sm_count(device)) * std::max(occupancy, 1);
  const int64_t grid = std::min<int64_t>(slots, (n + kThreads - 1) / kThreads);
  detail::copy_kernel<<<static_cast<unsigned>(grid), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint4*>(src), static_cast<uint4*>(dst), n);
  check(cudaGetLastError(), "copy launch");
}

void schedule_values(int device, void* stream, const double* enc, const int64_t* t, double* out,
                     int64_t n) {
  set_device(device);
  if (n == 0) return;
  detail::schedule_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0,
                    static_cast<cudaStream_t>(stream)>>>(enc, t, out, n);
  check(cudaGetLastError(), "schedule launch");
}

int multiprocessor_count(int device) { return sm_count(device); }

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int max_tensors_per_launch(int) { return detail::kMaxTensors; }

}  // namespace cuda
}  // namespace fastlr
