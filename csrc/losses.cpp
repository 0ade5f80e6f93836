#include "losses.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.hpp"
#include "vec8.hpp"

namespace ssondo {
namespace {

// F.normalize's and Park's pdist's epsilon.
constexpr double kEps = 1e-12;
// Largest batch / frame count accepted: keeps b * b * b in range and the buffers sane.
constexpr std::size_t kMaxRows = std::size_t(1) << 16;

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

void check_rows(const char* fn, const void* gs, const void* gt, std::size_t b) {
  require(gs != nullptr && gt != nullptr, std::string(fn) + ": Gram matrix pointer is null");
  require(b >= 1 && b <= kMaxRows, std::string(fn) + ": batch size " + std::to_string(b) +
                                       " is outside [1, " + std::to_string(kMaxRows) + "]");
}

// Rows per parallel chunk so that each chunk does at least ~256k elementary steps (a few
// hundred microseconds): below that, starting and joining a thread costs more than it saves.
std::size_t min_rows(std::size_t work_per_row) {
  return std::max<std::size_t>(1, (std::size_t(1) << 18) / std::max<std::size_t>(1, work_per_row));
}

double smooth_l1(double d) {
  const double a = std::fabs(d);
  return a < 1.0 ? 0.5 * d * d : a - 0.5;
}

double clamp1(double d) { return std::min(1.0, std::max(-1.0, d)); }

// Sum of per-row partial results, in a fixed order (deterministic for any thread count).
double total(const std::vector<double>& rows) {
  return std::accumulate(rows.begin(), rows.end(), 0.0);
}

// grad = (m + m^T) * scale for a b x b matrix m.
template <typename T>
void symmetrize(const T* m, std::size_t b, double scale, T* grad) {
  parallel_for(b, min_rows(b), [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      for (std::size_t k = 0; k < b; ++k) {
        grad[i * b + k] = static_cast<T>((double(m[i * b + k]) + double(m[k * b + i])) * scale);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// RKD angle
// ------------------------------------------------------------------------------------------

// r_ij = 1 / max(||x_i - x_j||, eps), with r_ii = 0 and r_ij = 0 for coincident rows (zero
// difference vector). Squared distances come from the Gram matrix; a pair whose Gram-derived
// squared distance is below a few thousand ulps of its squared norms (where cancellation leaves
// only rounding noise) is re-measured from the rows. r is exactly symmetric.
template <typename T>
void inverse_pair_norms(const T* g, const T* x, std::size_t d, std::size_t b, T* r) {
  const double tol = 4096.0 * std::numeric_limits<T>::epsilon();
  parallel_for(b, min_rows(b), [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      for (std::size_t j = 0; j < b; ++j) {
        if (i == j) {
          r[i * b + j] = 0;
          continue;
        }
        const std::size_t lo = std::min(i, j), hi = std::max(i, j);
        const double gll = g[lo * b + lo], ghh = g[hi * b + hi];
        double d2 = gll + ghh - 2.0 * double(g[lo * b + hi]);
        if (d2 <= tol * (std::fabs(gll) + std::fabs(ghh))) {
          const T* xl = x + lo * d;
          const T* xh = x + hi * d;
          double acc = 0.0;
          for (std::size_t c = 0; c < d; ++c) {
            const double diff = double(xl[c]) - double(xh[c]);
            acc += diff * diff;
          }
          d2 = acc;
        }
        r[i * b + j] = d2 > 0.0 ? static_cast<T>(1.0 / std::max(std::sqrt(d2), kEps)) : T(0);
      }
    }
  });
}

// Rows [begin, end) of the angle loss: for leg i, every apex j and every other leg k.
//   a_ijk = (G_ik - G_jk + G_jj - G_ij) r_ij r_jk   (the zero legs have r = 0, so a = 0)
// With kGrad it also writes, with the 1/B^3 factor left out and c_ijk = h'(a^s - a^t) r_ij r_jk:
//   acc[i][k] = sum_j c_ijk,  s[i][j] = sum_k c_ijk,  q[i][j] = sum_k h'(a^s - a^t) a^s_ijk,
// where h(d) = h'(d) (d - h'(d) / 2) is smooth L1 (Huber, delta 1) and h'(d) = clamp(d, -1, 1).

// The per-(i, j) inputs of the k loop.
template <typename T>
struct AngleLeg {
  const T *gsi, *gsj, *gti, *gtj, *rsj, *rtj;
  T rsij, rtij, cs, ct;
};

// Vec<T>::n values at p, or (kTail) the first m of them and zeros.
template <bool kTail, typename T>
SSONDO_FORCE_INLINE typename Vec<T>::V load_lanes(const T* p, std::size_t m) {
  return kTail ? vec_load_first(p, m) : vec_load(p);
}

// Terms k in [k0, k0 + m) of the k loop, one per lane (m < Vec<T>::n only for the tail, whose
// lanes beyond m load as zero: r_jk = 0 there, so all their terms are exactly 0). The clamp is
// a select: the compiler does not vectorise std::min/max by itself without -fno-trapping-math.
template <typename T, bool kGrad, bool kTail>
SSONDO_FORCE_INLINE void angle_lanes(const AngleLeg<T>& a, std::size_t k0, std::size_t m,
                                     T* acci, typename Vec<T>::V& hv, typename Vec<T>::V& sv,
                                     typename Vec<T>::V& qv) {
  typedef typename Vec<T>::V V;
  const V gsik = load_lanes<kTail>(a.gsi + k0, m), gsjk = load_lanes<kTail>(a.gsj + k0, m);
  const V gtik = load_lanes<kTail>(a.gti + k0, m), gtjk = load_lanes<kTail>(a.gtj + k0, m);
  const V ws = Vec<T>::splat(a.rsij) * load_lanes<kTail>(a.rsj + k0, m);
  const V wt = Vec<T>::splat(a.rtij) * load_lanes<kTail>(a.rtj + k0, m);
  const V as = (gsik - gsjk + Vec<T>::splat(a.cs)) * ws;
  const V at = (gtik - gtjk + Vec<T>::splat(a.ct)) * wt;
  const V diff = as - at;
  const V h1 = vec_min(vec_max(diff, Vec<T>::splat(T(-1))), Vec<T>::splat(T(1)));
  hv = hv + h1 * (diff - T(0.5) * h1);
  if (kGrad) {
    const V c = h1 * ws;
    const V acc = load_lanes<kTail>(acci + k0, m) + c;
    if (kTail) {
      vec_store_first(acci + k0, acc, m);
    } else {
      vec_store(acci + k0, acc);
    }
    sv = sv + c;
    qv = qv + h1 * as;
  }
}

// The whole k loop of one (i, j) pair: two vectors per step with independent partial sums,
// then at most one whole and one partial vector; the lanes are summed in v8_sum's order and
// added to h, s and q.
template <typename T, bool kGrad>
SSONDO_FORCE_INLINE void angle_terms(const AngleLeg<T>& a, std::size_t b, T* acci, double& h,
                                     double& s, double& q) {
  typedef typename Vec<T>::V V;
  constexpr std::size_t N = Vec<T>::n;
  V hv[2], sv[2], qv[2];
  for (int u = 0; u < 2; ++u) hv[u] = sv[u] = qv[u] = Vec<T>::splat(T(0));
  std::size_t k = 0;
  for (; k + 2 * N <= b; k += 2 * N) {
    angle_lanes<T, kGrad, false>(a, k, N, acci, hv[0], sv[0], qv[0]);
    angle_lanes<T, kGrad, false>(a, k + N, N, acci, hv[1], sv[1], qv[1]);
  }
  if (k + N <= b) {
    angle_lanes<T, kGrad, false>(a, k, N, acci, hv[0], sv[0], qv[0]);
    k += N;
  }
  if (k < b) angle_lanes<T, kGrad, true>(a, k, b - k, acci, hv[1], sv[1], qv[1]);
  h += v8_sum(hv[0] + hv[1]);
  s += v8_sum(sv[0] + sv[1]);
  q += v8_sum(qv[0] + qv[1]);
}

// Rows are taken kRowBlock at a time so that the four apex rows (G^s_j, G^t_j, r^s_j, r^t_j)
// are read from memory once per block instead of once per row: at B = 1024 the loop is
// otherwise bound by memory bandwidth. Each row's arithmetic (j, then k, ascending) does not
// depend on the blocking.
constexpr std::size_t kRowBlock = 8;

template <typename T, bool kGrad>
SSONDO_MULTIVERSION_FMA void angle_rows(std::size_t begin, std::size_t end, std::size_t b,
                                        const T* gs, const T* gt, const T* rs, const T* rt,
                                        T* acc, T* s, T* q, double* loss_rows) {
  for (std::size_t i0 = begin; i0 < end; i0 += kRowBlock) {
    const std::size_t i1 = std::min(end, i0 + kRowBlock);
    for (std::size_t i = i0; i < i1; ++i) {
      loss_rows[i] = 0.0;
      if (kGrad) std::fill(acc + i * b, acc + (i + 1) * b, T(0));
    }
    for (std::size_t j = 0; j < b; ++j) {
      for (std::size_t i = i0; i < i1; ++i) {
        T* acci = kGrad ? acc + i * b : nullptr;
        AngleLeg<T> a;
        a.rsij = rs[i * b + j];
        a.rtij = rt[i * b + j];
        if (kGrad) s[i * b + j] = q[i * b + j] = 0;
        if (a.rsij == 0 && a.rtij == 0) continue;  // both legs i-j are zero: every angle is 0
        a.gsi = gs + i * b;
        a.gti = gt + i * b;
        a.gsj = gs + j * b;
        a.gtj = gt + j * b;
        a.rsj = rs + j * b;
        a.rtj = rt + j * b;
        a.cs = a.gsj[j] - a.gsi[j];
        a.ct = a.gtj[j] - a.gti[j];
        double hs = 0.0, ss = 0.0, qs = 0.0;
        angle_terms<T, kGrad>(a, b, acci, hs, ss, qs);
        loss_rows[i] += hs;
        if (kGrad) {
          s[i * b + j] = static_cast<T>(ss);
          q[i * b + j] = static_cast<T>(qs);
        }
      }
    }
  }
}

}  // namespace

template <typename T>
double rkd_angle_loss(const T* gs, const T* gt, const T* xs, std::size_t ds, const T* xt,
                      std::size_t dt, std::size_t b, T* grad) {
  check_rows("rkd_angle_loss", gs, gt, b);
  require(xs != nullptr && xt != nullptr, "rkd_angle_loss: embedding pointer is null");
  require(ds >= 1 && dt >= 1, "rkd_angle_loss: embedding dims must be >= 1, got " +
                                  std::to_string(ds) + " and " + std::to_string(dt));
  const std::size_t bb = b * b;
  std::vector<T> rs(bb), rt(bb);
  inverse_pair_norms(gs, xs, ds, b, rs.data());
  inverse_pair_norms(gt, xt, dt, b, rt.data());
  std::vector<double> loss_rows(b, 0.0);
  const double inv = 1.0 / (double(b) * double(b) * double(b));
  if (grad == nullptr) {
    parallel_for(b, min_rows(bb), [&](std::size_t begin, std::size_t end) {
      angle_rows<T, false>(begin, end, b, gs, gt, rs.data(), rt.data(), nullptr, nullptr,
                           nullptr, loss_rows.data());
    });
    return total(loss_rows) * inv;
  }
  std::vector<T> acc(bb), s(bb), q(bb);
  parallel_for(b, min_rows(bb), [&](std::size_t begin, std::size_t end) {
    angle_rows<T, true>(begin, end, b, gs, gt, rs.data(), rt.data(), acc.data(), s.data(),
                        q.data(), loss_rows.data());
  });
  // Chain rule from the per-triplet terms to dL/dG (up to 1/B^3), using the i <-> k symmetry
  // of a_ijk: sum_i c_ijk = s[k][j]. Per triplet, dG_ik += c, dG_ij -= c, dG_jk -= c,
  // dG_jj += c; per leg, through r_ij (only where ||x_i - x_j|| > eps; F.normalize's clamp has
  // no gradient): dL/dD2_ij = -r_ij^2 q_ij, with D2_ij = G_ii + G_jj - 2 G_ij. Since only
  // dG + dG^T is needed, every off-diagonal term of pair (i, j) is put in row i; the diagonal
  // terms are collected in `diag` (v_ij = dL/dD2_ij reuses q's storage).
  const T r_clamped = static_cast<T>(1.0 / kEps);
  parallel_for(b, min_rows(b), [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      for (std::size_t j = 0; j < b; ++j) {
        if (j == i) continue;
        const T r = rs[i * b + j];
        const T v = (r > 0 && r < r_clamped) ? -r * r * q[i * b + j] : T(0);
        q[i * b + j] = v;
        acc[i * b + j] -= 2 * (s[i * b + j] + v);
      }
    }
  });
  std::vector<double> diag(b, 0.0);
  for (std::size_t i = 0; i < b; ++i) {
    for (std::size_t j = 0; j < b; ++j) {
      if (j == i) continue;
      const double v = q[i * b + j];
      diag[i] += v;
      diag[j] += double(s[i * b + j]) + v;
    }
  }
  for (std::size_t i = 0; i < b; ++i) acc[i * b + i] += static_cast<T>(diag[i]);
  symmetrize(acc.data(), b, inv, grad);
  return total(loss_rows) * inv;
}

// ------------------------------------------------------------------------------------------
// RKD distance
// ------------------------------------------------------------------------------------------

template <typename T>
double rkd_distance_loss(const T* gs, const T* gt, std::size_t b, T* grad) {
  check_rows("rkd_distance_loss", gs, gt, b);
  const std::size_t bb = b * b;
  if (b < 2) {
    if (grad != nullptr) std::fill(grad, grad + bb, T(0));
    return 0.0;
  }
  // Park's pdist: d_ij = sqrt(clamp(G_ii + G_jj - 2 G_ij, min=eps)) for i != j, d_ii = 0.
  // `live` (if given) marks entries above the clamp (the only ones with a gradient).
  auto distances = [&](const T* g, std::vector<double>& d, std::vector<char>* live) {
    d.assign(bb, 0.0);
    if (live != nullptr) live->assign(bb, 0);
    for (std::size_t i = 0; i < b; ++i) {
      for (std::size_t j = 0; j < b; ++j) {
        if (i == j) continue;
        const std::size_t lo = std::min(i, j), hi = std::max(i, j);
        const double d2 =
            double(g[lo * b + lo]) + double(g[hi * b + hi]) - 2.0 * double(g[lo * b + hi]);
        if (live != nullptr) (*live)[i * b + j] = d2 > kEps;
        d[i * b + j] = std::sqrt(std::max(d2, kEps));
      }
    }
  };
  // Mean of the non-zero distances (all off-diagonal entries are >= sqrt(eps) > 0).
  auto mean_positive = [&](const std::vector<double>& d, std::size_t& count) {
    double sum = 0.0;
    count = 0;
    for (double v : d) {
      if (v > 0) {
        sum += v;
        ++count;
      }
    }
    return sum / double(count);
  };
  std::vector<double> dS, dT;
  std::vector<char> liveS;
  distances(gs, dS, grad != nullptr ? &liveS : nullptr);
  distances(gt, dT, nullptr);
  std::size_t countS = 0, countT = 0;
  const double muS = mean_positive(dS, countS);
  const double muT = mean_positive(dT, countT);
  const double inv = 1.0 / double(bb);
  // h1_ij = smoothL1'(diff_ij) / B^2 = dL/d(d_ij / mu)
  auto h1 = [&](std::size_t e) { return clamp1(dS[e] / muS - dT[e] / muT) * inv; };
  double loss = 0.0, k_sum = 0.0;
  for (std::size_t e = 0; e < bb; ++e) {
    loss += smooth_l1(dS[e] / muS - dT[e] / muT);
    if (grad != nullptr) k_sum += h1(e) * dS[e];
  }
  if (grad != nullptr) {
    // dL/dd_ij = h1_ij / mu - [d_ij > 0] sum_kl h1_kl d_kl / (count mu^2);
    // dL/dD2_ij = dL/dd_ij / (2 d_ij) where unclamped. D2_ij = G_ii + G_jj - 2 G_ij.
    std::vector<T> dg(bb, T(0));
    std::vector<double> diag(b, 0.0);
    const double mean_term = k_sum / (double(countS) * muS * muS);
    for (std::size_t i = 0; i < b; ++i) {
      for (std::size_t j = 0; j < b; ++j) {
        const std::size_t e = i * b + j;
        if (i == j || !liveS[e]) continue;
        const double dd = h1(e) / muS - mean_term;
        const double v = dd * 0.5 / dS[e];
        dg[e] = static_cast<T>(-2.0 * v);
        diag[i] += v;
        diag[j] += v;
      }
    }
    for (std::size_t i = 0; i < b; ++i) dg[i * b + i] = static_cast<T>(diag[i]);
    symmetrize(dg.data(), b, 1.0, grad);
  }
  return loss * inv;
}

// ------------------------------------------------------------------------------------------
// Pairwise cosine
// ------------------------------------------------------------------------------------------

template <typename T>
double pairwise_cosine_loss(const T* gs, const T* gt, std::size_t b, T* grad) {
  check_rows("pairwise_cosine_loss", gs, gt, b);
  const std::size_t bb = b * b;
  std::vector<double> us(b), ut(b);
  std::vector<char> live(b);
  for (std::size_t i = 0; i < b; ++i) {
    const double ns = std::sqrt(std::max(0.0, double(gs[i * b + i])));
    const double nt = std::sqrt(std::max(0.0, double(gt[i * b + i])));
    us[i] = 1.0 / std::max(ns, kEps);
    ut[i] = 1.0 / std::max(nt, kEps);
    live[i] = ns > kEps;
  }
  const double inv = 1.0 / double(bb);
  std::vector<double> loss_rows(b, 0.0);
  std::vector<T> dg(grad != nullptr ? bb : 0);
  std::vector<double> du(b, 0.0);  // row part of dL/du_i; the column part is added below
  std::vector<double> dcol(grad != nullptr ? bb : 0);
  parallel_for(b, min_rows(b), [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      double loss = 0.0, dui = 0.0;
      for (std::size_t j = 0; j < b; ++j) {
        const std::size_t e = i * b + j;
        const double cs = double(gs[e]) * us[i] * us[j];
        const double diff = cs - double(gt[e]) * ut[i] * ut[j];
        loss += diff * diff;
        if (grad != nullptr) {
          const double dc = 2.0 * diff * inv;
          dg[e] = static_cast<T>(dc * us[i] * us[j]);
          dui += dc * double(gs[e]) * us[j];
          dcol[e] = dc * double(gs[e]) * us[i];  // contribution to dL/du_j
        }
      }
      loss_rows[i] = loss;
      du[i] = dui;
    }
  });
  if (grad != nullptr) {
    for (std::size_t i = 0; i < b; ++i) {
      for (std::size_t j = 0; j < b; ++j) du[j] += dcol[i * b + j];
    }
    // u_i = 1 / sqrt(G_ii): du_i/dG_ii = -u_i^3 / 2 (no gradient where the norm is clamped).
    for (std::size_t i = 0; i < b; ++i) {
      if (live[i]) dg[i * b + i] += static_cast<T>(-0.5 * us[i] * us[i] * us[i] * du[i]);
    }
    symmetrize(dg.data(), b, 1.0, grad);
  }
  return total(loss_rows) * inv;
}

// ------------------------------------------------------------------------------------------
// Similarity preserving (and IUSP: one Gram per utterance)
// ------------------------------------------------------------------------------------------

template <typename T>
double similarity_preserving_loss(const T* gs, const T* gt, std::size_t batch, std::size_t n,
                                  T* grad) {
  check_rows("similarity_preserving_loss", gs, gt, n);
  require(batch >= 1 && batch <= kMaxRows, "similarity_preserving_loss: batch " +
                                               std::to_string(batch) + " is outside [1, " +
                                               std::to_string(kMaxRows) + "]");
  const std::size_t nn = n * n;
  const std::size_t rows = batch * n;
  const double scale = 1.0 / (double(nn) * double(batch));
  std::vector<double> loss_rows(rows, 0.0);
  std::vector<T> dg(grad != nullptr ? batch * nn : 0);
  // Row r of the stacked [batch * n, n] Grams: N_rj = G_rj w_r, w_r = 1 / max(||G_r||, eps).
  // dL/dG_rl = w_r dN_rl - w_r^3 G_rl sum_j dN_rj G_rj (the second term only where unclamped).
  parallel_for(rows, min_rows(n), [&](std::size_t begin, std::size_t end) {
    std::vector<double> dn(n);
    for (std::size_t r = begin; r < end; ++r) {
      const T* gsr = gs + r * n;
      const T* gtr = gt + r * n;
      double ms = 0.0, mt = 0.0;
      for (std::size_t j = 0; j < n; ++j) {
        ms += double(gsr[j]) * double(gsr[j]);
        mt += double(gtr[j]) * double(gtr[j]);
      }
      ms = std::sqrt(ms);
      mt = std::sqrt(mt);
      const double ws = 1.0 / std::max(ms, kEps), wt = 1.0 / std::max(mt, kEps);
      double loss = 0.0, dot = 0.0;
      for (std::size_t j = 0; j < n; ++j) {
        const double diff = double(gsr[j]) * ws - double(gtr[j]) * wt;
        loss += diff * diff;
        dn[j] = 2.0 * diff * scale;
        dot += dn[j] * double(gsr[j]);
      }
      loss_rows[r] = loss;
      if (grad != nullptr) {
        const double w3 = ms > kEps ? ws * ws * ws * dot : 0.0;
        T* dgr = dg.data() + r * n;
        for (std::size_t j = 0; j < n; ++j) {
          dgr[j] = static_cast<T>(ws * dn[j] - w3 * double(gsr[j]));
        }
      }
    }
  });
  if (grad != nullptr) {
    for (std::size_t m = 0; m < batch; ++m) symmetrize(dg.data() + m * nn, n, 1.0, grad + m * nn);
  }
  return total(loss_rows) * scale;
}

template double rkd_angle_loss<float>(const float*, const float*, const float*, std::size_t,
                                      const float*, std::size_t, std::size_t, float*);
template double rkd_angle_loss<double>(const double*, const double*, const double*, std::size_t,
                                       const double*, std::size_t, std::size_t, double*);
template double rkd_distance_loss<float>(const float*, const float*, std::size_t, float*);
template double rkd_distance_loss<double>(const double*, const double*, std::size_t, double*);
template double pairwise_cosine_loss<float>(const float*, const float*, std::size_t, float*);
template double pairwise_cosine_loss<double>(const double*, const double*, std::size_t, double*);
template double similarity_preserving_loss<float>(const float*, const float*, std::size_t,
                                                  std::size_t, float*);
template double similarity_preserving_loss<double>(const double*, const double*, std::size_t,
                                                   std::size_t, double*);

}  // namespace ssondo
