// Index bookkeeping of so2ops/layout.py, usable from host and device code.
//
// * irreps rows: coefficient (l, m) of x[N, (lmax+1)^2, C] sits at row l*l + l + m;
// * packed Wigner-D: block D^l (2l+1)x(2l+1) row-major at wigner_offset(l);
// * spherical-harmonic normalisation table: entry (l, m >= 0) at l(l+1)/2 + m.
//
// This header has no dependency (not even the standard library), so the
// header-math tests under csrc/tests compile without libtorch or CUDA.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SO2_HD __host__ __device__
#define SO2_INLINE __forceinline__
#else
#define SO2_HD
#define SO2_INLINE inline
#endif

namespace so2ops {

//: Largest degree the kernels support (so2ops.layout.LMAX_SUPPORTED).
constexpr int kLmaxSupported = 8;
//: Largest number of Wigner sample points a kernel accepts: the CUDA
//: edge_wigner kernels give one lane of a warp to each point.  The tables of
//: so2ops.wigner_tables use 3*lmax + 3 <= 27 points.
constexpr int kMaxPoints = 32;

SO2_HD constexpr int num_coeffs(int lmax) { return (lmax + 1) * (lmax + 1); }
SO2_HD constexpr int coeff_index(int l, int m) { return l * l + l + m; }
SO2_HD constexpr int wigner_offset(int l) { return l * (2 * l - 1) * (2 * l + 1) / 3; }
SO2_HD constexpr int wigner_size(int lmax) { return wigner_offset(lmax + 1); }
SO2_HD constexpr int sh_norm_index(int l, int m) { return l * (l + 1) / 2 + m; }
SO2_HD constexpr int num_sh_norms(int lmax) { return (lmax + 1) * (lmax + 2) / 2; }

//: Largest per-edge sizes, for fixed-size scratch arrays.
constexpr int kMaxCoeffs = num_coeffs(kLmaxSupported);     // 81
constexpr int kMaxWignerSize = wigner_size(kLmaxSupported);  // 969

static_assert(wigner_size(0) == 1 && wigner_size(1) == 10 && wigner_size(8) == 969, "wigner_size");

}  // namespace so2ops
