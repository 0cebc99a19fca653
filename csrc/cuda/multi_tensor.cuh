// The CUDA multi-tensor kernel, shared by sgd.cu, adam.cu, rmsprop.cu and adagrad.cu
// (one translation unit per optimizer so they compile in parallel): one launch updates
// a list of tensors with the per-element rules of fastlr/update.hpp and the schedules
// of fastlr/schedule.hpp evaluated on the device.
//
// Layout of one launch (apex's multi_tensor_apply, without its chunk table): the
// tensor table travels by value as the kernel argument (up to kMaxTensors tensors,
// ~12 KB; CUDA >= 12.1 allows 32 KB of parameters), so a launch needs no device
// allocation or copy and is graph-capturable as it is. The tensors' elements form one
// index space, each tensor padded to kAlign elements, cut into equal contiguous
// ranges, one per block, with one block per resident slot on the device (a single
// wave, no tail): small tensors are batched into one block, large ones are split.
// Inside a range a block walks tensor segments with 16-byte vector loads when every
// pointer of the tensor is 16-byte aligned (range starts are multiples of kAlign
// elements inside a tensor), scalar code for the rest.
//
// Per-step scalars (lr(t), momentum/beta1(t), bias corrections, 1/grad_scale) are
// computed by one thread per block in double from the tensor's device step counter,
// and recomputed only when the next tensor's counter differs. Step counters are
// advanced by a one-block kernel launched first; found_inf != 0 makes every kernel
// return before writing anything (GradScaler's skipped step).
//
// Built with -fmad=false, IEEE division and sqrt (nvcc's defaults for the last two):
// the same operation order as the CPU kernels, which are built with
// -ffp-contract=off, so float32/float64 results match the CPU path.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/launch.hpp"
#include "fastlr/schedule.hpp"
#include "fastlr/update.hpp"

namespace fastlr {
namespace cuda {
namespace detail {

constexpr int kThreads = 512;
constexpr int kMaxTensors = 192;
constexpr int kMaxIncrements = 1024;
constexpr int64_t kAlign = 64;              // range starts inside a tensor: 64 elements
constexpr int64_t kMinPerBlock = 1 << 14;   // below this a block's setup dominates

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("fastlr CUDA: ") + what + ": " + cudaGetErrorString(e));
}

// Defined in common.cu.
int sm_count(int device);
void set_device(int device);
void launch_increments(const Common& c);

// ------------------------------------------------------------- storage ---
// bfloat16/float16 as raw bits: trivially copyable, packable in 16-byte vectors.
struct Bf16 {
  uint16_t bits;
};
struct Half {
  uint16_t bits;
};

template <class S> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };
template <class S> using compute_t = typename ComputeOf<S>::type;

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ double load(double x) { return x; }
__device__ __forceinline__ float load(Bf16 x) { return __uint_as_float(uint32_t(x.bits) << 16); }
__device__ __forceinline__ float load(Half x) { return __half2float(__ushort_as_half(x.bits)); }

__device__ __forceinline__ void store(float& d, float x) { d = x; }
__device__ __forceinline__ void store(double& d, double x) { d = x; }
// Round to nearest even with every NaN as 0x7FC0: bit-identical to dtype.hpp's store.
__device__ __forceinline__ void store(Bf16& d, float x) {
  const uint32_t u = __float_as_uint(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  d.bits = static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}
__device__ __forceinline__ void store(Half& d, float x) {
  d.bits = __half_as_ushort(__float2half_rn(x));
}

template <class S>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(S);
  S v[N];
};

// ---------------------------------------------------------- the table ---

template <int NR>
struct Table {
  char* ptr[NR][kMaxTensors];
  void* step[kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t offset[kMaxTensors + 1];  // padded prefix sums of numel
  int64_t per_block;                // elements per block, a multiple of kAlign
  int n;
  uint8_t first[kMaxTensors];
};

struct DeviceCommon {
  const float* grad_scale;
  const float* found_inf;
  const double* lr_schedule;
  const double* momentum_schedule;
  const void* schedule_step;
  int step_dtype;
};

struct StepList {
  void* ptr[kMaxIncrements];
  int n;
  int dtype;
};

__device__ __forceinline__ double read_step(const void* p, int dtype) {
  if (p == nullptr) return 1.0;
  switch (dtype) {
    case 0: return static_cast<double>(*static_cast<const float*>(p));
    case 1: return *static_cast<const double*>(p);
    case 2: return static_cast<double>(*static_cast<const int32_t*>(p));
    default: return static_cast<double>(*static_cast<const int64_t*>(p));
  }
}

__device__ __forceinline__ bool skipped(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.0f;
}

// Schedule index of the update whose 1-based index is `step`.
__device__ __forceinline__ int64_t t_of(double step) {
  return step > 1.0 ? static_cast<int64_t>(step) - 1 : 0;
}

// Schedule index of this update: from the group counter when there is one, else from
// the tensor's own step.
__device__ __forceinline__ int64_t schedule_t(const DeviceCommon& c, double step) {
  return t_of(c.schedule_step != nullptr ? read_step(c.schedule_step, c.step_dtype) : step);
}

// Out of line: one copy of the schedule evaluator (and of pow) serves every kernel,
// which keeps the build's ptxas time down; it runs once per block.
static __device__ __noinline__ double schedule_value(const double* enc, int64_t t) {
  return fastlr::schedule_at(enc, t);
}

static __device__ __noinline__ double power(double x, double y) { return pow(x, y); }

__device__ __forceinline__ double scheduled(const double* enc, double value, int64_t t) {
  return enc != nullptr ? value * schedule_value(enc, t) : value;
}

__device__ __forceinline__ double grad_mul(bool maximize, const DeviceCommon& c) {
  const double sign = maximize ? -1.0 : 1.0;
  return c.grad_scale != nullptr ? sign / static_cast<double>(*c.grad_scale) : sign;
}

// ------------------------------------------------------ the operations ---
// Each Op names its roles, which it reads and writes (so each variant moves only
// the bytes its rule needs), its per-step scalars and its element rule.

// --------------------------------------------------------- the kernel ---

// Elements [lo, hi) of one tensor; lo is a multiple of kAlign.
template <class Op, class S>
__device__ __forceinline__ void run_segment(char* const (&base)[Op::NR], int64_t lo, int64_t hi,
                                            const typename Op::Scalars& s, bool first) {
  using C = typename Op::C;
  constexpr int NR = Op::NR;
  constexpr int N = Pack<S>::N;
  S* p[NR];
  bool aligned = true;
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    p[r] = reinterpret_cast<S*>(base[r]);
    if ((Op::reads(r, first) || Op::writes(r)) && (reinterpret_cast<uintptr_t>(p[r]) & 15) != 0)
      aligned = false;
  }
  int64_t i = lo;
  if (aligned) {
    const int64_t vec_end = lo + (hi - lo) / N * N;
    for (int64_t v = lo + static_cast<int64_t>(threadIdx.x) * N; v < vec_end;
         v += static_cast<int64_t>(blockDim.x) * N) {
      Pack<S> pk[NR];
#pragma unroll
      for (int r = 0; r < NR; ++r)
        if (Op::reads(r, first)) pk[r] = *reinterpret_cast<const Pack<S>*>(p[r] + v);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        C x[NR];
#pragma unroll
        for (int r = 0; r < NR; ++r) x[r] = Op::reads(r, first) ? C(load(pk[r].v[j])) : C(0);
        Op::apply(x, s, first);
#pragma unroll
        for (int r = 0; r < NR; ++r)
          if (Op::writes(r)) store(pk[r].v[j], x[r]);
      }
#pragma unroll
      for (int r = 0; r < NR; ++r)
        if (Op::writes(r)) *reinterpret_cast<Pack<S>*>(p[r] + v) = pk[r];
    }
    i = vec_end;
  }
  for (int64_t k = i + threadIdx.x; k < hi; k += blockDim.x) {
    C x[NR];
#pragma unroll
    for (int r = 0; r < NR; ++r) x[r] = Op::reads(r, first) ? C(load(p[r][k])) : C(0);
    Op::apply(x, s, first);
#pragma unroll
    for (int r = 0; r < NR; ++r)
      if (Op::writes(r)) store(p[r][k], x[r]);
  }
}

// Two blocks per SM (<= 64 registers): 1024 threads with four 16-byte loads each in
// flight cover the memory latency.
template <class Op, class S>
__global__ void __launch_bounds__(kThreads, 2)
    multi_tensor_kernel(const __grid_constant__ Table<Op::NR> tab,
                        const __grid_constant__ typename Op::Args args,
                        const __grid_constant__ DeviceCommon c) {
  if (skipped(c.found_inf)) return;
  const int64_t total = tab.offset[tab.n];
  const int64_t start = static_cast<int64_t>(blockIdx.x) * tab.per_block;
  const int64_t end = start + tab.per_block < total ? start + tab.per_block : total;
  if (start >= end) return;
  // Last tensor whose padded range begins at or before `start`.
  int lo = 0, hi = tab.n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tab.offset[mid] <= start) lo = mid;
    else hi = mid - 1;
  }
  __shared__ typename Op::Scalars shared_scalars;
  double prev_step = -1.0;
  for (int i = lo; i < tab.n && tab.offset[i] < end; ++i) {
    const int64_t a = (start > tab.offset[i] ? start : tab.offset[i]) - tab.offset[i];
    const int64_t b = end - tab.offset[i] < tab.numel[i] ? end - tab.offset[i] : tab.numel[i];
    if (a >= b) continue;  // only padding of tensor i in this range
    const double step = read_step(tab.step[i], c.step_dtype);  // block-uniform
    if (step != prev_step) {
      __syncthreads();  // every thread has its copy of the previous scalars
      if (threadIdx.x == 0) shared_scalars = Op::scalars(args, c, step);
      __syncthreads();
      prev_step = step;
    }
    const typename Op::Scalars s = shared_scalars;
    char* base[Op::NR];
#pragma unroll
    for (int r = 0; r < Op::NR; ++r) base[r] = tab.ptr[r][i];
    run_segment<Op, S>(base, a, b, s, tab.first[i] != 0);
  }
}

// ------------------------------------------------------------- launch ---

template <class Op, class S>
int blocks_per_sm() {
  static int occupancy = 0;
  if (occupancy == 0) {
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, multi_tensor_kernel<Op, S>,
                                                        kThreads, 0),
          "occupancy");
    if (occupancy < 1) occupancy = 1;
  }
  return occupancy;
}

template <class Op, class S>
void launch(const Lists& l, const Common& c, const typename Op::Args& args) {
  constexpr int NR = Op::NR;
  cudaStream_t stream = static_cast<cudaStream_t>(c.stream);
  const DeviceCommon dc{c.grad_scale, c.found_inf, c.lr_schedule, c.momentum_schedule,
                        c.schedule_step, static_cast<int>(c.step_dtype)};
  const int64_t slots = static_cast<int64_t>(sm_count(c.device)) * blocks_per_sm<Op, S>();
  Table<NR> tab;  // ~12 KB on the host stack, copied into the launch
  for (int64_t at = 0; at < l.n;) {
    tab.n = 0;
    tab.offset[0] = 0;
    for (; at < l.n && tab.n < kMaxTensors; ++at) {
      const int k = tab.n;
      const int64_t numel = l.numel[at];
      if (numel == 0) continue;
      for (int r = 0; r < NR; ++r) tab.ptr[r][k] = l.ptrs[r] ? l.ptrs[r][at] : nullptr;
      tab.step[k] = l.step ? l.step[at] : nullptr;
      tab.first[k] = l.first ? l.first[at] : 0;
      tab.numel[k] = numel;
      tab.offset[k + 1] = tab.offset[k] + (numel + kAlign - 1) / kAlign * kAlign;
      ++tab.n;
    }
    if (tab.n == 0) continue;
    const int64_t total = tab.offset[tab.n];
    int64_t per_block = std::max<int64_t>((total + slots - 1) / slots, kMinPerBlock);
    per_block = (per_block + kAlign - 1) / kAlign * kAlign;
    tab.per_block = per_block;
    const int64_t grid = (total + per_block - 1) / per_block;
    multi_tensor_kernel<Op, S><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(tab, args, dc);
    check(cudaGetLastError(), "kernel launch");
  }
}

inline WeightDecay wd_mode(double weight_decay, bool decoupled) {
  if (weight_decay == 0.0) return WeightDecay::none;
  return decoupled ? WeightDecay::decoupled : WeightDecay::coupled;
}

// Calls F<S>::run for the storage type of a dtype code.
template <template <class> class F, class... A>
void by_dtype(int dtype, A&&... a) {
  switch (dtype) {
    case 0: return F<float>::run(a...);
    case 1: return F<double>::run(a...);
    case 2: return F<Bf16>::run(a...);
    case 3: return F<Half>::run(a...);
  }
  throw std::invalid_argument("dtype code must be 0..3");
}

template <template <class> class F, class Args>
void entry(int dtype, const Lists& l, const Common& c, const Args& a) {
  set_device(c.device);
  launch_increments(c);
  by_dtype<F>(dtype, l, c, a);
}

}  // namespace detail
}  // namespace cuda
}  // namespace fastlr
