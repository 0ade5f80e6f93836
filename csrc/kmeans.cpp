#include "kmeans.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.hpp"

#include "vec8.hpp"

namespace ssondo {
namespace kmeans {
namespace {

// Register block of the micro-kernel: MR rows x NR centroids. NR is also the width of a
// packed centroid panel. Tiles: MB rows of x per scratch tile, KC dims per L1 block.
constexpr std::size_t MR = 6;
constexpr std::size_t NR = 16;
constexpr std::size_t MB = 96;  // multiple of MR
constexpr std::size_t KC = 256;

std::size_t round_up(std::size_t a, std::size_t b) { return (a + b - 1) / b * b; }

std::string row_name(const Rows& x, std::size_t i) {
  const std::int64_t id = x.row_ids ? x.row_ids[i] : x.row_offset + static_cast<std::int64_t>(i);
  return "row " + std::to_string(id);
}

// --- kernels (vec8.hpp: compiled for x86-64-v3 and the baseline, chosen at load time) -------

// out[r][j] (+)= sum_p x[r*ldx + p] * b[p*NR + j], r < MR, j < NR: MR x NR accumulators in
// 2 MR V8 registers, one broadcast row value times two panel vectors per step.
SSONDO_MULTIVERSION_FMA
void micro(const float* x, std::size_t ldx, const float* b, std::size_t kc, float* out,
           std::size_t ldo, bool accumulate) {
  static_assert(NR == 16, "a panel row is two V8");
  V8 acc[MR][2];
  for (std::size_t r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = v8_splat(0.f);
  for (std::size_t p = 0; p < kc; ++p) {
    const V8 b0 = v8_load(b + p * NR), b1 = v8_load(b + p * NR + 8);
    for (std::size_t r = 0; r < MR; ++r) {
      const V8 a = v8_splat(x[r * ldx + p]);
      acc[r][0] = v8_fma(a, b0, acc[r][0]);
      acc[r][1] = v8_fma(a, b1, acc[r][1]);
    }
  }
  for (std::size_t r = 0; r < MR; ++r) {
    float* o = out + r * ldo;
    if (accumulate) {
      acc[r][0] = acc[r][0] + v8_load(o);
      acc[r][1] = acc[r][1] + v8_load(o + 8);
    }
    v8_store(o, acc[r][0]);
    v8_store(o + 8, acc[r][1]);
  }
}

// Sum of squares of v[0..d): two V8 partial sums over blocks of 16, then at most one whole
// and one zero-padded vector, then the lanes in v8_sum's order.
SSONDO_MULTIVERSION_FMA
float sum_squares(const float* v, std::size_t d) {
  V8 a0 = v8_splat(0.f), a1 = v8_splat(0.f);
  std::size_t p = 0;
  for (; p + 16 <= d; p += 16) {
    const V8 u = v8_load(v + p), w = v8_load(v + p + 8);
    a0 = v8_fma(u, u, a0);
    a1 = v8_fma(w, w, a1);
  }
  if (p + 8 <= d) {
    const V8 u = v8_load(v + p);
    a0 = v8_fma(u, u, a0);
    p += 8;
  }
  if (p < d) {
    const V8 u = vec_load_first(v + p, d - p);
    a1 = v8_fma(u, u, a1);
  }
  return v8_sum(a0 + a1);
}

// IEEE half row -> float row, eight values at a time.
SSONDO_MULTIVERSION
void half_row(const std::uint16_t* h, float* out, std::size_t d) {
  std::size_t p = 0;
  for (; p + 8 <= d; p += 8) v8_store(out + p, v8_from_half(h + p));
  for (; p < d; ++p) out[p] = half_to_float(h[p]);
}

// --- packed centroids: panels of NR centroids, dimension-major, zero padded ----------------

struct Packed {
  std::size_t k = 0, kpad = 0, d = 0;
  std::vector<float> panels;  // [kpad / NR][d][NR]
  std::vector<float> norms;   // ||c_j||^2 (1 for cosine)
};

Packed pack_centroids(const float* c, std::size_t k, std::size_t d, Metric metric) {
  Packed pc;
  pc.k = k;
  pc.d = d;
  pc.kpad = round_up(k, NR);
  pc.panels.assign(pc.kpad * d, 0.f);
  pc.norms.assign(pc.kpad, 0.f);
  for (std::size_t j = 0; j < k; ++j) {
    const float* cj = c + j * d;
    double s = 0.0;
    for (std::size_t p = 0; p < d; ++p) {
      if (!std::isfinite(cj[p])) {
        throw std::invalid_argument("kmeans: centroid " + std::to_string(j) +
                                    " has a NaN or inf value; centroids must be finite");
      }
      s += static_cast<double>(cj[p]) * cj[p];
    }
    float scale = 1.f;
    if (metric == Metric::cosine) {
      if (s == 0.0) {
        throw std::invalid_argument("kmeans: centroid " + std::to_string(j) +
                                    " is all zeros; the cosine metric needs non-zero centroids");
      }
      scale = static_cast<float>(1.0 / std::sqrt(s));
      s = 1.0;
    }
    pc.norms[j] = static_cast<float>(s);
    float* panel = pc.panels.data() + (j / NR) * d * NR;
    for (std::size_t p = 0; p < d; ++p) panel[p * NR + j % NR] = cj[p] * scale;
  }
  return pc;
}

// --- row tiles ---------------------------------------------------------------------------

// Loads rows [i0, i0 + m) of x into the scratch tile xt [MB x d] (rows m..MB zeroed) as
// float32, validates them, normalises them for cosine, and writes their squared norms.
void load_tile(const Rows& x, std::size_t i0, std::size_t m, Metric metric, float* xt,
               float* xnorm) {
  const std::size_t d = x.d;
  for (std::size_t r = 0; r < m; ++r) {
    float* dst = xt + r * d;
    const std::size_t i = i0 + r;
    if (x.dtype == DType::f32) {
      std::memcpy(dst, static_cast<const float*>(x.data) + i * d, d * sizeof(float));
    } else {
      half_row(static_cast<const std::uint16_t*>(x.data) + i * d, dst, d);
    }
    float s = sum_squares(dst, d);
    if (!std::isfinite(s)) {
      for (std::size_t p = 0; p < d; ++p) {
        if (!std::isfinite(dst[p])) {
          throw std::invalid_argument("kmeans: " + row_name(x, i) + " has a NaN or inf value " +
                                      "(column " + std::to_string(p) + "); rows must be finite");
        }
      }
      throw std::invalid_argument("kmeans: " + row_name(x, i) +
                                  " has values too large for squared distances in float32 "
                                  "(|x| must be below about 1e18)");
    }
    if (metric == Metric::cosine) {
      if (s == 0.f) {
        throw std::invalid_argument("kmeans: " + row_name(x, i) +
                                    " is all zeros; the cosine metric needs non-zero rows");
      }
      const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s)));
      for (std::size_t p = 0; p < d; ++p) dst[p] *= inv;
      s = 1.f;
    }
    xnorm[r] = s;
  }
  for (std::size_t r = m; r < MB; ++r) {
    std::memset(xt + r * d, 0, d * sizeof(float));
    xnorm[r] = 0.f;
  }
}

// dot [MB x kpad] = xt [rows of the tile] . centroids^T, for the first round_up(m, MR) rows.
void dot_tile(const float* xt, std::size_t m, const Packed& pc, float* dot) {
  const std::size_t d = pc.d, npanels = pc.kpad / NR, rows = round_up(m, MR);
  for (std::size_t p0 = 0; p0 < d; p0 += KC) {
    const std::size_t kc = std::min(KC, d - p0);
    for (std::size_t jp = 0; jp < npanels; ++jp) {
      const float* panel = pc.panels.data() + jp * d * NR + p0 * NR;
      for (std::size_t r = 0; r < rows; r += MR) {
        micro(xt + r * d + p0, d, panel, kc, dot + r * pc.kpad + jp * NR, pc.kpad, p0 > 0);
      }
    }
  }
}

// Per-worker scratch for one row tile.
struct Scratch {
  std::vector<float> xt, xnorm, dot;
  Scratch(std::size_t d, std::size_t kpad) : xt(MB * d), xnorm(MB), dot(MB * kpad) {}
};

void check_rows(const Rows& x, const char* what) {
  if (x.d == 0) throw std::invalid_argument(std::string(what) + ": rows must have d >= 1 values");
  if (x.n > 0 && x.data == nullptr) throw std::invalid_argument(std::string(what) + ": null data");
}

}  // namespace

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {
    // Subnormal half: normalise the mantissa.
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    mant &= 0x3ffu;
    bits = sign | (exp << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void prepare_rows(const Rows& x, Metric metric, float* out) {
  check_rows(x, "prepare_rows");
  parallel_for((x.n + MB - 1) / MB, 1, [&](std::size_t t0, std::size_t t1) {
    std::vector<float> xt(MB * x.d), xnorm(MB);
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t i0 = t * MB, m = std::min(MB, x.n - i0);
      load_tile(x, i0, m, metric, xt.data(), xnorm.data());
      std::memcpy(out + i0 * x.d, xt.data(), m * x.d * sizeof(float));
    }
  });
}

void assign(const Rows& x, const float* centroids, std::size_t k, Metric metric,
            std::int32_t* labels, float* dist, double* sums, std::int64_t* counts) {
  check_rows(x, "assign");
  if (k < 1) throw std::invalid_argument("assign: k must be >= 1, got 0");
  if (k > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
    throw std::invalid_argument("assign: k must be < 2^31, got " + std::to_string(k));
  }
  const Packed pc = pack_centroids(centroids, k, x.d, metric);
  const std::size_t d = x.d, ntiles = (x.n + MB - 1) / MB;
  // Fixed work split: one contiguous range of tiles per worker, each with its own partial sums,
  // reduced in worker order so that the result does not depend on thread timing.
  const std::size_t workers =
      std::max<std::size_t>(1, std::min<std::size_t>(get_num_threads(), ntiles));
  const std::size_t per = (ntiles + workers - 1) / workers;
  const bool acc = sums != nullptr || counts != nullptr;
  std::vector<std::vector<double>> part_sums(acc && sums ? workers : 0);
  std::vector<std::vector<std::int64_t>> part_counts(acc ? workers : 0);
  parallel_for(workers, 1, [&](std::size_t w0, std::size_t w1) {
    Scratch s(d, pc.kpad);
    for (std::size_t w = w0; w < w1; ++w) {
      double* psum = nullptr;
      std::int64_t* pcount = nullptr;
      if (acc) {
        part_counts[w].assign(k, 0);
        pcount = part_counts[w].data();
        if (sums) {
          part_sums[w].assign(k * d, 0.0);
          psum = part_sums[w].data();
        }
      }
      const std::size_t tend = std::min(ntiles, (w + 1) * per);
      for (std::size_t t = w * per; t < tend; ++t) {
        const std::size_t i0 = t * MB, m = std::min(MB, x.n - i0);
        load_tile(x, i0, m, metric, s.xt.data(), s.xnorm.data());
        dot_tile(s.xt.data(), m, pc, s.dot.data());
        for (std::size_t r = 0; r < m; ++r) {
          const float* dr = s.dot.data() + r * pc.kpad;
          std::size_t best = 0;
          float bestv = std::numeric_limits<float>::infinity();
          for (std::size_t j = 0; j < k; ++j) {
            const float v = pc.norms[j] - 2.f * dr[j];
            if (v < bestv) {
              bestv = v;
              best = j;
            }
          }
          const float dv = metric == Metric::cosine ? 1.f - dr[best] : s.xnorm[r] + bestv;
          if (labels) labels[i0 + r] = static_cast<std::int32_t>(best);
          if (dist) dist[i0 + r] = std::max(0.f, dv);
          if (pcount) ++pcount[best];
          if (psum) {
            double* sb = psum + best * d;
            const float* xr = s.xt.data() + r * d;
            for (std::size_t p = 0; p < d; ++p) sb[p] += xr[p];
          }
        }
      }
    }
  });
  for (std::size_t w = 0; w < part_counts.size(); ++w) {
    if (part_counts[w].empty()) continue;
    if (counts)
      for (std::size_t j = 0; j < k; ++j) counts[j] += part_counts[w][j];
    if (sums)
      for (std::size_t q = 0; q < k * d; ++q) sums[q] += part_sums[w][q];
  }
}

void sq_distances(const float* x, std::size_t n, const float* c, std::size_t m, std::size_t d,
                  float* out) {
  if (d == 0 || m == 0) throw std::invalid_argument("sq_distances: need d >= 1 and m >= 1");
  const Packed pc = pack_centroids(c, m, d, Metric::euclidean);
  Rows rows;
  rows.data = x;
  rows.n = n;
  rows.d = d;
  parallel_for((n + MB - 1) / MB, 1, [&](std::size_t t0, std::size_t t1) {
    Scratch s(d, pc.kpad);
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t i0 = t * MB, mm = std::min(MB, n - i0);
      load_tile(rows, i0, mm, Metric::euclidean, s.xt.data(), s.xnorm.data());
      dot_tile(s.xt.data(), mm, pc, s.dot.data());
      for (std::size_t r = 0; r < mm; ++r) {
        const float* dr = s.dot.data() + r * pc.kpad;
        float* o = out + (i0 + r) * m;
        for (std::size_t j = 0; j < m; ++j) {
          o[j] = std::max(0.f, s.xnorm[r] + pc.norms[j] - 2.f * dr[j]);
        }
      }
    }
  });
}

void kmeanspp(const float* x, std::size_t n, std::size_t d, std::size_t k, int n_trials,
              std::uint64_t seed, std::int64_t* chosen) {
  if (k < 1) throw std::invalid_argument("kmeans++: k must be >= 1, got 0");
  if (k > n) {
    throw std::invalid_argument("kmeans++: k = " + std::to_string(k) +
                                " is larger than the number of points n = " + std::to_string(n));
  }
  if (d == 0) throw std::invalid_argument("kmeans++: d must be >= 1");
  // The candidates of one step form the rows of a tile and the points are packed once as
  // "centroid" panels, so the kernel computes rows in groups of MR: the default number of
  // trials, 2 + ln k (scikit-learn's), is rounded up to a multiple of MR at no extra cost.
  const std::size_t sk_trials = 2 + static_cast<std::size_t>(std::log(static_cast<double>(k)));
  const std::size_t trials = std::min<std::size_t>(
      MB, n_trials > 0 ? static_cast<std::size_t>(n_trials) : round_up(sk_trials, MR));
  std::mt19937_64 rng(seed);
  auto uniform = [&rng]() { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };
  auto uniform_index = [&](std::size_t m) {
    return std::min<std::size_t>(m - 1, static_cast<std::size_t>(uniform() * m));
  };
  const Packed px = pack_centroids(x, n, d, Metric::euclidean);
  Rows cand_rows;
  cand_rows.d = d;
  std::vector<float> raw(MB * d), centre(MB * d), cnorm(MB), cand_dist(trials * n), closest(n);
  std::vector<double> cumsum(n);
  // cand_dist[t * n + i] = ||raw_t - x_i||^2 for the first `rows` candidate rows in `raw`.
  auto distances = [&](std::size_t rows) {
    cand_rows.data = raw.data();
    cand_rows.n = rows;
    load_tile(cand_rows, 0, rows, Metric::euclidean, centre.data(), cnorm.data());
    const std::size_t npanels = px.kpad / NR;
    parallel_for(npanels, 16, [&](std::size_t j0, std::size_t j1) {
      std::vector<float> dot(MB * NR);
      for (std::size_t jp = j0; jp < j1; ++jp) {
        for (std::size_t p0 = 0; p0 < d; p0 += KC) {
          const std::size_t kc = std::min(KC, d - p0);
          const float* panel = px.panels.data() + jp * d * NR + p0 * NR;
          for (std::size_t r = 0; r < round_up(rows, MR); r += MR) {
            micro(centre.data() + r * d + p0, d, panel, kc, dot.data() + r * NR, NR, p0 > 0);
          }
        }
        const std::size_t i0 = jp * NR, i1 = std::min(n, i0 + NR);
        for (std::size_t t = 0; t < rows; ++t) {
          for (std::size_t i = i0; i < i1; ++i) {
            cand_dist[t * n + i] =
                std::max(0.f, cnorm[t] + px.norms[i] - 2.f * dot[t * NR + (i - i0)]);
          }
        }
      }
    });
  };

  chosen[0] = static_cast<std::int64_t>(uniform_index(n));
  std::memcpy(raw.data(), x + chosen[0] * d, d * sizeof(float));
  distances(1);
  std::copy(cand_dist.begin(), cand_dist.begin() + n, closest.begin());
  std::vector<std::size_t> cand(trials);
  for (std::size_t c = 1; c < k; ++c) {
    double pot = 0.0;
    for (std::size_t i = 0; i < n; ++i) cumsum[i] = (pot += closest[i]);
    for (std::size_t t = 0; t < trials; ++t) {
      std::size_t i;
      if (pot > 0.0) {
        const double u = uniform() * pot;
        i = std::upper_bound(cumsum.begin(), cumsum.end(), u) - cumsum.begin();
        i = std::min(i, n - 1);
        while (closest[i] == 0.f && i > 0) --i;  // never land on a zero-weight point
        while (closest[i] == 0.f && i + 1 < n) ++i;
      } else {
        i = uniform_index(n);
      }
      cand[t] = i;
      std::memcpy(raw.data() + t * d, x + i * d, d * sizeof(float));
    }
    distances(trials);
    std::size_t best = 0;
    double best_pot = std::numeric_limits<double>::infinity();
    for (std::size_t t = 0; t < trials; ++t) {
      const float* dt = cand_dist.data() + t * n;
      double p = 0.0;
      for (std::size_t i = 0; i < n; ++i) p += std::min(closest[i], dt[i]);
      if (p < best_pot) {
        best_pot = p;
        best = t;
      }
    }
    chosen[c] = static_cast<std::int64_t>(cand[best]);
    const float* db = cand_dist.data() + best * n;
    for (std::size_t i = 0; i < n; ++i) closest[i] = std::min(closest[i], db[i]);
  }
}

std::size_t update_centroids(float* centroids, double* weights, const double* sums,
                             const std::int64_t* counts, std::size_t k, std::size_t d,
                             Metric metric, bool lloyd) {
  std::size_t empty = 0;
  std::vector<double> c(d);
  for (std::size_t j = 0; j < k; ++j) {
    if (counts[j] < 0) {
      throw std::invalid_argument("update_centroids: counts[" + std::to_string(j) +
                                  "] is negative");
    }
    if (counts[j] == 0) {
      ++empty;
      continue;
    }
    float* cj = centroids + j * d;
    const double nj = static_cast<double>(counts[j]);
    const double w = lloyd ? 0.0 : weights[j];
    double norm2 = 0.0;
    for (std::size_t p = 0; p < d; ++p) {
      c[p] = (w * cj[p] + sums[j * d + p]) / (w + nj);
      norm2 += c[p] * c[p];
    }
    if (!lloyd) weights[j] = w + nj;
    if (metric == Metric::cosine) {
      if (norm2 == 0.0) continue;
      const double inv = 1.0 / std::sqrt(norm2);
      for (std::size_t p = 0; p < d; ++p) c[p] *= inv;
    }
    for (std::size_t p = 0; p < d; ++p) cj[p] = static_cast<float>(c[p]);
  }
  return empty;
}

}  // namespace kmeans
}  // namespace ssondo
