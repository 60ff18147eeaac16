// The tile-size knob: a test hook that forces small tiles, so that the
// multi-tile, split-segment and grid-stride paths of the kernels run on the
// tiny inputs of the tests (with their own choice, every test input fits one
// tile, and those paths would only run at production sizes).
//
// tile_override() = n > 0 shrinks every tile-like unit to n:
//   * the tiled driver of so2_linear / so2_message / so2_frame_linear (CPU and
//     CUDA, so2_message_driver.h): n edges per tile, so destination segments
//     are cut across tiles (CUDA) and the CPU tile loop has several tiles;
//   * CUDA Wigner-gradient contraction (wigner_grad.cuh): min(n, 32) channels
//     per shared-memory slab, so C > n takes several slabs;
//   * CUDA grid-stride launches (so2_tiles.cuh, so2_grid_product.cu): at most n
//     blocks, so each thread loops over several items;
//   * CUDA edge_wigner forward: min(n, 8) edges per block.
// 0 (the default) leaves every choice to the kernels.  Set from Python with
// so2ops._C.set_tile_override(n) (so2ops.testing.tile_size(n) is the context
// manager); without it the environment variable SO2OPS_TILE_EDGES=<n> (read on
// every call) does the same.  Results do not depend on it beyond rounding.
#pragma once

#include <stdint.h>

#include <atomic>
#include <cstdlib>

namespace so2ops {
namespace detail {

// One slot per process: an inline function's static is shared by every
// translation unit of the extension (host code of the .cu files included).
inline std::atomic<int64_t>& tile_override_slot() {
  static std::atomic<int64_t> slot{0};
  return slot;
}

}  // namespace detail

/// Sets the forced tile size (n <= 0: none); returns the previous setting.
inline int64_t set_tile_override(int64_t n) { return detail::tile_override_slot().exchange(n > 0 ? n : 0); }

/// The forced tile size, 0 when none: the setter's value, else SO2OPS_TILE_EDGES.
inline int64_t tile_override() {
  const int64_t v = detail::tile_override_slot().load(std::memory_order_relaxed);
  if (v > 0) return v;
  if (const char* env = std::getenv("SO2OPS_TILE_EDGES")) {
    const long long e = std::atoll(env);
    if (e > 0) return int64_t(e);
  }
  return 0;
}

/// `natural` capped at the forced tile size (when one is set).
inline int64_t tile_cap(int64_t natural) {
  const int64_t n = tile_override();
  return n > 0 && n < natural ? n : natural;
}

}  // namespace so2ops
