// Segmented (sorted-by-destination) reductions: the one helper every op and
// backend uses to scatter-add edge values into node rows without atomics.
//
// The edges are put in a stable order by their destination row ("key"): the
// positions of equal key form a segment (a run), and a segment is summed by a
// single worker in position order, i.e. ascending edge id, so the result is
// bitwise reproducible.
//
// * stable_order(key, n): the order itself, [E] int64 on the key's device;
//   CPU: counting sort (O(E + n)), CUDA: stable device radix sort.
// * counting_sort(...): the host counting sort behind it, optionally with the
//   CSR row starts (segment of row r = positions start[r] .. start[r+1]).
// * for_segment(p, end, key_at, body): device / host walk of the segment
//   headed by position p; only the head of a run works (returns false for the
//   other positions), so every output row has exactly one writer.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <c10/util/Exception.h>

#include <stdint.h>

#include <tuple>
#include <vector>

#include "so2ops/layout.h"

namespace so2ops {
namespace segments {

/// Stable counting sort of `key[0..E)` (values in [0, n)): order[q] is the edge at
/// position q.  With `start` (n + 1 entries) also the CSR segment starts.
inline void counting_sort(const int64_t* key, int64_t E, int64_t n, int64_t* order, int64_t* start = nullptr) {
  std::vector<int64_t> local;
  if (start == nullptr) {
    local.assign(n + 1, 0);
    start = local.data();
  } else {
    std::fill(start, start + n + 1, int64_t(0));
  }
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(key[e] >= 0 && key[e] < n, "so2ops: index ", key[e], " outside [0, ", n, ")");
    ++start[key[e] + 1];
  }
  for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
  std::vector<int64_t> fill(start, start + n);
  for (int64_t e = 0; e < E; ++e) order[fill[key[e]]++] = e;
}

/// Stable order of the edges by `key` (a row of edge_index, values in [0, n)), on the key's device.
inline at::Tensor stable_order(const at::Tensor& key_in, int64_t n) {
  const at::Tensor key = key_in.contiguous();
  if (key.is_cpu()) {
    at::Tensor order = at::empty({key.numel()}, key.options());
    counting_sort(key.data_ptr<int64_t>(), key.numel(), n, order.data_ptr<int64_t>());
    return order;
  }
  // Stable device radix sort; out-of-range keys only move, the kernels skip them.
  return std::get<1>(at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false));
}

/// If position p heads its segment (p == 0 or key_at(p - 1) != key_at(p)), calls
/// body(q) for every position q of the segment in order (q < end) and returns true;
/// otherwise returns false without calling body.
template <class KeyAt, class Body>
SO2_HD SO2_INLINE bool for_segment(int64_t p, int64_t end, const KeyAt& key_at, const Body& body) {
  const int64_t row = key_at(p);
  if (p > 0 && key_at(p - 1) == row) return false;
  for (int64_t q = p; q < end; ++q) {
    if (q != p && key_at(q) != row) break;
    body(q);
  }
  return true;
}

}  // namespace segments
}  // namespace so2ops
