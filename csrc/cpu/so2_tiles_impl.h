// CPU tile kernels of so2_linear / so2_message (the bodies behind CpuKernels).
//
// Included twice by csrc/cpu/so2_tiles.cpp, once compiled for AVX2 + FMA and
// once for the baseline ISA, each time inside its own namespace; no include
// guard on purpose.  Everything here is a template or inline, vectorised over
// the channels with `omp simd`.
using so2::mod_offset;
using so2::num_signs;
using so2::tile_index;

/// Edge id at position p of the tile.
inline int64_t edge_at(const TileSpec& spec, int64_t p) { return spec.perm ? spec.perm[spec.p0 + p] : spec.p0 + p; }

/// Grain of at::parallel_for: enough items that a chunk costs ~32k multiply-adds.
inline int64_t grain_for(int64_t cost_per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, cost_per_item));
}

template <typename T>
inline void axpy(T* __restrict__ o, const T* __restrict__ v, T a, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) o[c] += a * v[c];
}

template <typename T>
inline void scale_into(T* __restrict__ o, const T* __restrict__ v, T a, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) o[c] = a * v[c];
}

template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}

/// Channels per register block of the blocked loops below (one or two vector registers).
constexpr int64_t kChanBlock = 16;

/// o[c] = sum_j D^l[i, j] f[j, c]  (or f[i, c] when D is null), i.e. one row of D^l f.
/// Channel blocks are summed in registers over j (ascending j, as before blocking).
template <typename T>
inline void rotate_row(T* __restrict__ o, const T* D, const T* f, int l, int i, int64_t C) {
  if (D == nullptr) {
    std::copy(f + i * C, f + (i + 1) * C, o);
    return;
  }
  const int n = 2 * l + 1;
  const T* drow = D + wigner_offset(l) + i * n;
  int64_t c0 = 0;
  for (; c0 + kChanBlock <= C; c0 += kChanBlock) {
    T acc[kChanBlock];
#pragma omp simd
    for (int64_t b = 0; b < kChanBlock; ++b) acc[b] = drow[0] * f[c0 + b];
    for (int j = 1; j < n; ++j) {
      const T d = drow[j];
      const T* fj = f + j * C + c0;
#pragma omp simd
      for (int64_t b = 0; b < kChanBlock; ++b) acc[b] += d * fj[b];
    }
#pragma omp simd
    for (int64_t b = 0; b < kChanBlock; ++b) o[c0 + b] = acc[b];
  }
  if (c0 < C) {
    scale_into(o + c0, f + c0, drow[0], C - c0);
    for (int j = 1; j < n; ++j) axpy(o + c0, f + j * C + c0, drow[j], C - c0);
  }
}

/// ol[j, c] += sum over the tile rows i = (m, s), |m| <= mtop, of D^l[l + s m, j] y_i[c] for the
/// positions [pb, pe) of one destination segment.  Each channel block of an output row is kept in
/// registers; the terms are added in the order (position, m, s) of the unblocked loop.
template <typename T, int64_t W>
inline void rotate_out_block(T* __restrict__ ol, const TileSpec& spec, const T* tile, const T* wig, int64_t C, int l,
                             int mtop, int64_t pb, int64_t pe, int64_t c0, int64_t width) {
  const int lmax = spec.lmax, nl = 2 * l + 1;
  const int64_t P = wigner_size(lmax), n = spec.count;
  const int64_t w = W > 0 ? W : width;
  for (int j = 0; j < nl; ++j) {
    T acc[kChanBlock];
    T* oj = ol + j * C + c0;
    for (int64_t b = 0; b < w; ++b) acc[b] = oj[b];
    for (int64_t p = pb; p < pe; ++p) {
      const T* Dl = wig + edge_at(spec, p) * P + wigner_offset(l);
      for (int m = 0; m <= mtop; ++m) {
        for (int s = 0; s < num_signs(m); ++s) {
          const T d = Dl[(l + (s ? -m : m)) * nl + j];
          const T* y = tile + tile_index(n, C, lmax, m, p, s, l, c0);
#pragma omp simd
          for (int64_t b = 0; b < w; ++b) acc[b] += d * y[b];
        }
      }
    }
    for (int64_t b = 0; b < w; ++b) oj[b] = acc[b];
  }
}

template <typename T>
inline void rotate_out_segment(T* __restrict__ ol, const TileSpec& spec, const T* tile, const T* wig, int64_t C, int l,
                               int mtop, int64_t pb, int64_t pe) {
  int64_t c0 = 0;
  for (; c0 + kChanBlock <= C; c0 += kChanBlock)
    rotate_out_block<T, kChanBlock>(ol, spec, tile, wig, C, l, mtop, pb, pe, c0, kChanBlock);
  if (c0 < C) rotate_out_block<T, 0>(ol, spec, tile, wig, C, l, mtop, pb, pe, c0, C - c0);
}

// ------------------------------------------------------------------ kernels

template <typename T>
void rotate_in_cpu(const TileSpec& spec, const T* feat, int64_t C, const int64_t* idx, const T* wig, const T* mod,
                   T* tile) {
  const int lmax = spec.lmax, mmax = spec.mmax;
  const int64_t K = num_coeffs(lmax), P = wigner_size(lmax), nmod = so2::num_mod(lmax, mmax), n = spec.count;
  at::parallel_for(0, n, grain_for(K * C * (2 * lmax + 1)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t e = edge_at(spec, p);
      const T* xs = feat + (idx ? idx[e] : e) * K * C;
      const T* D = wig ? wig + e * P : nullptr;
      for (int m = 0; m <= mmax; ++m) {
        for (int l = m; l <= lmax; ++l) {
          const T* md = mod ? mod + (e * nmod + mod_offset(lmax, m) + l - m) * C : nullptr;
          for (int s = 0; s < num_signs(m); ++s) {
            T* o = tile + tile_index(n, C, lmax, m, p, s, l, 0);
            rotate_row(o, D, xs + int64_t(l) * l * C, l, l + (s ? -m : m), C);
            if (md) {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) o[c] *= md[c];
            }
          }
        }
      }
    }
  });
}

template <typename T>
void rotate_in_backward_cpu(const TileSpec& spec, const T* x, int64_t C, const int64_t* idx, const T* wig,
                            const T* mod, T* a_tile, T* ga_tile, T* grad_mod) {
  const int lmax = spec.lmax, mmax = spec.mmax;
  const int64_t K = num_coeffs(lmax), P = wigner_size(lmax), nmod = so2::num_mod(lmax, mmax), n = spec.count;
  const bool need_a = a_tile || grad_mod;
  at::parallel_for(0, n, grain_for(K * C * (2 * lmax + 1)), [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(a_tile ? 0 : C);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t e = edge_at(spec, p);
      const T* xs = x + (idx ? idx[e] : e) * K * C;
      const T* D = wig ? wig + e * P : nullptr;
      for (int m = 0; m <= mmax; ++m) {
        for (int l = m; l <= lmax; ++l) {
          const int64_t q = mod_offset(lmax, m) + l - m;
          const T* md = mod + (e * nmod + q) * C;
          T* gm = grad_mod ? grad_mod + (e * nmod + q) * C : nullptr;
          for (int s = 0; s < num_signs(m); ++s) {
            const int64_t t = tile_index(n, C, lmax, m, p, s, l, 0);
            T* ga = ga_tile + t;
            if (need_a) {
              T* a = a_tile ? a_tile + t : tmp.data();
              rotate_row(a, D, xs + int64_t(l) * l * C, l, l + (s ? -m : m), C);
              if (gm) {
                // d/dmod of (mod * a): the gradient w.r.t. the modulated input times a, summed over +-m.
                if (s == 0) {
#pragma omp simd
                  for (int64_t c = 0; c < C; ++c) gm[c] = a[c] * ga[c];
                } else {
#pragma omp simd
                  for (int64_t c = 0; c < C; ++c) gm[c] += a[c] * ga[c];
                }
              }
              if (a_tile) {
#pragma omp simd
                for (int64_t c = 0; c < C; ++c) a[c] *= md[c];
              }
            }
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) ga[c] *= md[c];
          }
        }
      }
    }
  });
}

template <typename T>
void rotate_out_add_cpu(const TileSpec& spec, const T* tile, int64_t C, const int64_t* idx, const T* wig, T* out) {
  const int lmax = spec.lmax, mmax = spec.mmax;
  const int64_t K = num_coeffs(lmax), n = spec.count;
  // Segments of equal destination: the tile positions are sorted by idx.
  std::vector<int64_t> heads;
  if (idx) {
    heads.reserve(n + 1);
    int64_t prev = -1;
    for (int64_t p = 0; p < n; ++p) {
      const int64_t t = idx[edge_at(spec, p)];
      if (p == 0 || t != prev) heads.push_back(p);
      prev = t;
    }
    heads.push_back(n);
  }
  const int64_t nseg = idx ? int64_t(heads.size()) - 1 : n;
  // One work item per (segment, degree): they write disjoint output rows.
  const int64_t items = nseg * (lmax + 1);
  at::parallel_for(0, items, grain_for(C * (2 * lmax + 1) * (2 * mmax + 1)), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t seg = it / (lmax + 1);
      const int l = int(it % (lmax + 1));
      const int mtop = std::min(l, mmax);
      const int64_t pb = idx ? heads[seg] : seg, pe = idx ? heads[seg + 1] : seg + 1;
      if (wig != nullptr) {
        // every position of the segment writes the same output row
        const int64_t e0 = edge_at(spec, pb);
        rotate_out_segment(out + ((idx ? idx[e0] : e0) * K + int64_t(l) * l) * C, spec, tile, wig, C, l, mtop, pb, pe);
        continue;
      }
      for (int64_t p = pb; p < pe; ++p) {
        const int64_t e = edge_at(spec, p);
        T* ol = out + ((idx ? idx[e] : e) * K + int64_t(l) * l) * C;
        for (int m = 0; m <= mtop; ++m)
          for (int s = 0; s < num_signs(m); ++s)
            axpy(ol + (l + (s ? -m : m)) * C, tile + tile_index(n, C, lmax, m, p, s, l, 0), T(1), C);
      }
    }
  });
}

template <typename T>
void wigner_grad_cpu(const TileSpec& spec, const T* ga, const T* x, int64_t cin, const int64_t* src, const T* y,
                     const T* g, int64_t cout, const int64_t* tgt, T* gw) {
  const int lmax = spec.lmax, mmax = spec.mmax;
  const int64_t K = num_coeffs(lmax), P = wigner_size(lmax), n = spec.count;
  at::parallel_for(0, n, grain_for(P * (cin + cout)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t e = edge_at(spec, p);
      // a null `ga` / `y` drops that side's term (its frame is the identity: so2_frame_linear)
      const T* xs = ga ? x + (src ? src[e] : e) * K * cin : nullptr;
      const T* gt = y ? g + (tgt ? tgt[e] : e) * K * cout : nullptr;
      T* ge = gw + e * P;
      for (int l = 0; l <= lmax; ++l) {
        const int nl = 2 * l + 1;
        T* gl = ge + wigner_offset(l);
        for (int i = 0; i < nl; ++i) {
          const int64_t off_in = so2::tile_row_offset(n, cin, lmax, mmax, p, l, i);
          if (off_in < 0) {  // |m| > mmax: the tile holds no such row
            std::fill(gl + i * nl, gl + (i + 1) * nl, T(0));
            continue;
          }
          const T* gar = ga ? ga + off_in : nullptr;
          const T* yr = y ? y + so2::tile_row_offset(n, cout, lmax, mmax, p, l, i) : nullptr;
          for (int j = 0; j < nl; ++j) {
            // Rotate-in term (a = D x) and rotate-out term (out = D^T y).
            T v = T(0);
            if (gar) v += dot(gar, xs + (int64_t(l) * l + j) * cin, cin);
            if (yr) v += dot(yr, gt + (int64_t(l) * l + j) * cout, cout);
            gl[i * nl + j] = v;
          }
        }
      }
    }
  });
}
