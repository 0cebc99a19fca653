// Multi-tensor traversal: one call updates every tensor of a list. The list's elements
// are seen as one index space [0, total), so small tensors are batched together and
// large ones are split, with no per-tensor task and no chunk table. Below
// kMinElementsPerThread elements per thread the call stays on the calling thread;
// otherwise the threads take chunks of kChunkElements from a shared counter, so a
// thread that the OS deschedules (the host is shared) does not hold up the others for
// its whole share. Chunk bounds fall on 16-element boundaries inside a tensor (a
// 64-byte line of float32) so threads never write the same cache line.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "fastlr/rounding.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastlr {

// Roles: 0 param, 1 grad, 2-4 states, 5 the float32 master copy of the param.
constexpr int kMaxRoles = 6;
constexpr int kMasterRole = 5;

// Where a run of elements lies: the rounding key of its tensor and the index of its
// first element in that tensor (stochastic rounding's counter).
struct Segment {
  uint64_t key;
  int64_t index;
};

// Updates n elements; ptrs[r] points at the first element of role r.
using LeafFn = void (*)(int64_t n, char* const* ptrs, const void* scalars, const Segment& seg);

struct TensorList {
  int64_t size = 0;                     // number of tensors
  const int64_t* numel = nullptr;       // [size]
  char* const* base[kMaxRoles] = {};    // base[r][i]: tensor i's data for role r (null: unused)
  int roles = 0;                        // roles 0 .. roles-1 are read (a master is role 5)
  int elem_size[kMaxRoles] = {4, 4, 4, 4, 4, 4};  // bytes per element, per role
  const int64_t* tensor_ids = nullptr;  // [size] ids for the rounding key; null: 0..size-1
  uint64_t rounding_key = 0;            // rounding_call_key(seed, t)
};

// Below this many elements per thread the wake-up costs more than it saves: on the
// 2-core dev host a 100K-element Adam call took a median 0.46 ms on one thread and
// 3.8 ms on two while the host was busy (the second thread waits to be scheduled).
constexpr int64_t kMinElementsPerThread = 1 << 17;
// Work grabbed per counter increment: 256 KiB of each float32 stream.
constexpr int64_t kChunkElements = 1 << 16;
constexpr int64_t kSplitAlign = 16;

namespace detail {

inline void run_range(const TensorList& list, const int64_t* offsets, int64_t lo, int64_t hi,
                      LeafFn leaf, const void* scalars) {
  int64_t i = std::upper_bound(offsets, offsets + list.size + 1, lo) - offsets - 1;
  char* ptrs[kMaxRoles];
  for (; lo < hi && i < list.size; ++i) {
    const int64_t end = std::min(hi, offsets[i + 1]);
    if (end <= lo) continue;
    const int64_t local = lo - offsets[i];
    for (int r = 0; r < kMaxRoles; ++r)
      ptrs[r] = list.base[r] ? list.base[r][i] + local * list.elem_size[r] : nullptr;
    const Segment seg{
        rounding_tensor_key(list.rounding_key, list.tensor_ids ? list.tensor_ids[i] : i), local};
    leaf(end - lo, ptrs, scalars, seg);
    lo = end;
  }
}

// Start of chunk c: c * kChunkElements moved down to an aligned offset inside the
// tensor it falls in (the same answer for both neighbouring chunks).
inline int64_t chunk_start(const int64_t* offsets, int64_t size, int64_t total, int64_t c) {
  const int64_t target = c * kChunkElements;
  if (target <= 0) return 0;
  if (target >= total) return total;
  const int64_t i = std::upper_bound(offsets, offsets + size + 1, target) - offsets - 1;
  const int64_t local = (target - offsets[i]) / kSplitAlign * kSplitAlign;
  return offsets[i] + local;
}

}  // namespace detail

// Applies `leaf` to every element of `list` using up to num_threads OpenMP threads.
// `offsets` is caller-owned scratch of list.size + 1 entries (no allocation here).
inline void for_each_segment(const TensorList& list, int64_t* offsets, LeafFn leaf,
                             const void* scalars, int num_threads) {
  offsets[0] = 0;
  for (int64_t i = 0; i < list.size; ++i) offsets[i + 1] = offsets[i] + list.numel[i];
  const int64_t total = offsets[list.size];
  if (total == 0) return;
  const int64_t by_grain = std::max<int64_t>(1, total / kMinElementsPerThread);
  const int nt = static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), by_grain));
#if defined(_OPENMP)
  if (nt > 1) {
    const int64_t chunks = (total + kChunkElements - 1) / kChunkElements;
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(nt)
    {
      for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
           c = next.fetch_add(1, std::memory_order_relaxed)) {
        const int64_t lo = detail::chunk_start(offsets, list.size, total, c);
        const int64_t hi = detail::chunk_start(offsets, list.size, total, c + 1);
        detail::run_range(list, offsets, lo, hi, leaf, scalars);
      }
    }
    return;
  }
#endif
  detail::run_range(list, offsets, 0, total, leaf, scalars);
}

}  // namespace fastlr
