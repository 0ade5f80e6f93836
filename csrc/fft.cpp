#include "fft.hpp"

#include "vec8.hpp"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ssondo {
namespace {

constexpr std::size_t L = kFftLanes;
constexpr double kPi = 3.14159265358979323846;
constexpr std::size_t kMaxOddRadix = 7;

// One radix-4 Stockham stage: sub-transforms of length nn = 4m at stride s (in lane groups).
SSONDO_MULTIVERSION
void radix4_stage(std::size_t m, std::size_t s, const float* tw, const float* xr, const float* xi,
                  float* yr, float* yi) {
  for (std::size_t p = 0; p < m; ++p) {
    const float w1r = tw[6 * p], w1i = tw[6 * p + 1], w2r = tw[6 * p + 2];
    const float w2i = tw[6 * p + 3], w3r = tw[6 * p + 4], w3i = tw[6 * p + 5];
    for (std::size_t q = 0; q < s; ++q) {
      const std::size_t ia = (q + s * p) * L, ib = ia + s * m * L, ic = ib + s * m * L,
                        id = ic + s * m * L, i0 = (q + s * 4 * p) * L, is = s * L;
      const V8 ar = v8_load(xr + ia), ai = v8_load(xi + ia);
      const V8 br = v8_load(xr + ib), bi = v8_load(xi + ib);
      const V8 cr = v8_load(xr + ic), ci = v8_load(xi + ic);
      const V8 dr = v8_load(xr + id), di = v8_load(xi + id);
      const V8 apcr = ar + cr, apci = ai + ci, amcr = ar - cr, amci = ai - ci;
      const V8 bpdr = br + dr, bpdi = bi + di;
      const V8 jr = bi - di, ji = dr - br;  // -i (b - d)
      const V8 t1r = amcr + jr, t1i = amci + ji;
      const V8 t2r = apcr - bpdr, t2i = apci - bpdi;
      const V8 t3r = amcr - jr, t3i = amci - ji;
      v8_store(yr + i0, apcr + bpdr);
      v8_store(yi + i0, apci + bpdi);
      v8_store(yr + i0 + is, t1r * w1r - t1i * w1i);
      v8_store(yi + i0 + is, t1r * w1i + t1i * w1r);
      v8_store(yr + i0 + 2 * is, t2r * w2r - t2i * w2i);
      v8_store(yi + i0 + 2 * is, t2r * w2i + t2i * w2r);
      v8_store(yr + i0 + 3 * is, t3r * w3r - t3i * w3i);
      v8_store(yi + i0 + 3 * is, t3r * w3i + t3i * w3r);
    }
  }
}

// The last stage when a factor 2 is left (nn = 2, no twiddles).
SSONDO_MULTIVERSION
void radix2_last(std::size_t s, const float* xr, const float* xi, float* yr, float* yi) {
  for (std::size_t q = 0; q < s; ++q) {
    const std::size_t ia = q * L, ib = (q + s) * L;
    const V8 ar = v8_load(xr + ia), ai = v8_load(xi + ia);
    const V8 br = v8_load(xr + ib), bi = v8_load(xi + ib);
    v8_store(yr + ia, ar + br);
    v8_store(yi + ia, ai + bi);
    v8_store(yr + ib, ar - br);
    v8_store(yi + ib, ai - bi);
  }
}

// One radix-r stage (r odd, r <= kMaxOddRadix) by a direct r-point DFT: roots holds
// exp(-2 pi i t / r) for t < r, tw holds exp(-2 pi i p k / nn) for k in [1, r) per p.
SSONDO_MULTIVERSION
void odd_radix_stage(std::size_t r, std::size_t m, std::size_t s, const float* roots,
                     const float* tw, const float* xr, const float* xi, float* yr, float* yi) {
  V8 ar[kMaxOddRadix], ai[kMaxOddRadix];
  for (std::size_t p = 0; p < m; ++p) {
    const float* w = tw + 2 * (r - 1) * p;
    for (std::size_t q = 0; q < s; ++q) {
      for (std::size_t j = 0; j < r; ++j) {
        ar[j] = v8_load(xr + (q + s * (p + j * m)) * L);
        ai[j] = v8_load(xi + (q + s * (p + j * m)) * L);
      }
      for (std::size_t k = 0; k < r; ++k) {
        V8 sr = ar[0], si = ai[0];
        for (std::size_t j = 1; j < r; ++j) {
          const std::size_t t = (j * k) % r;
          const float cr = roots[2 * t], ci = roots[2 * t + 1];
          sr = sr + ar[j] * cr - ai[j] * ci;
          si = si + ar[j] * ci + ai[j] * cr;
        }
        const std::size_t io = (q + s * (r * p + k)) * L;
        if (k == 0) {
          v8_store(yr + io, sr);
          v8_store(yi + io, si);
        } else {
          const float wr = w[2 * (k - 1)], wi = w[2 * (k - 1) + 1];
          v8_store(yr + io, sr * wr - si * wi);
          v8_store(yi + io, sr * wi + si * wr);
        }
      }
    }
  }
}

// Stockham autosort FFT of size n = product of `radices` (4s first, then odd radices, then at
// most one final 2) on lanes. Reads (xr, xi), ping-pongs with (yr, yi); returns true when the
// result ends in (yr, yi), false when it ends in (xr, xi).
bool stockham(std::size_t n, const std::vector<int>& radices, const float* tw, float* xr,
              float* xi, float* yr, float* yi) {
  static_assert(L == 8, "the FFT kernels work on V8 lane groups");
  std::size_t nn = n, s = 1;
  bool in_y = false;
  for (const int radix : radices) {
    const std::size_t r = static_cast<std::size_t>(radix), m = nn / r;
    if (r == 4) {
      radix4_stage(m, s, tw, xr, xi, yr, yi);
      tw += 6 * m;
    } else if (r == 2) {
      radix2_last(s, xr, xi, yr, yi);
    } else {
      odd_radix_stage(r, m, s, tw, tw + 2 * r, xr, xi, yr, yi);
      tw += 2 * r + 2 * (r - 1) * m;
    }
    nn = m;
    s *= r;
    std::swap(xr, yr);
    std::swap(xi, yi);
    in_y = !in_y;
  }
  return in_y;
}

// Splits the size-c complex FFT (zr, zi) of the packed even/odd samples into the c + 1 bins
// of the size-2c real FFT: X[k] = E[k] + w^k O[k] (see RealFFT::forward). Bins 0 and c both
// come from Z[0]; bins k and c - k from Z[k] and Z[c - k], with E[c - k] = conj E[k] and
// O[c - k] = conj O[k].
SSONDO_MULTIVERSION
void real_post(std::size_t c, const float* zr, const float* zi, const float* post_re,
               const float* post_im, float* out_re, float* out_im) {
  const V8 z0r = v8_load(zr), z0i = v8_load(zi);
  v8_store(out_re, z0r + z0i);
  v8_store(out_im, v8_splat(0.0f));
  v8_store(out_re + c * L, z0r - z0i);
  v8_store(out_im + c * L, v8_splat(0.0f));
  for (std::size_t k = 1; 2 * k <= c; ++k) {
    const std::size_t ip = k * L, iq = (c - k) * L;
    const V8 pr = v8_load(zr + ip), pi = v8_load(zi + ip);
    const V8 qr = v8_load(zr + iq), qi = v8_load(zi + iq);
    const V8 er = 0.5f * (pr + qr), ei = 0.5f * (pi - qi);
    const V8 orr = 0.5f * (pi + qi), oi = 0.5f * (qr - pr);
    const float wr = post_re[k], wi = post_im[k], vr = post_re[c - k], vi = post_im[c - k];
    v8_store(out_re + ip, er + wr * orr - wi * oi);
    v8_store(out_im + ip, ei + wr * oi + wi * orr);
    v8_store(out_re + iq, er + vr * orr + vi * oi);
    v8_store(out_im + iq, vi * orr - ei - vr * oi);
  }
}

// y[k] = x[k] * w[k] for k < n on every lane: complex x, y in the lane layout, w one complex
// number per k (y may be x).
void multiply_lanes(std::size_t n, const float* wr, const float* wi, const float* xr,
                    const float* xi, float* yr, float* yi) {
  for (std::size_t k = 0; k < n; ++k) {
    for (std::size_t l = 0; l < L; ++l) {
      const float zr = xr[k * L + l], zi = xi[k * L + l];
      yr[k * L + l] = zr * wr[k] - zi * wi[k];
      yi[k * L + l] = zr * wi[k] + zi * wr[k];
    }
  }
}

void check_size(std::size_t n, const char* what) {
  if (n < 1 || n > kMaxFftSize) {
    throw std::invalid_argument(std::string(what) + ": size " + std::to_string(n) +
                                " is outside [1, " + std::to_string(kMaxFftSize) + "]");
  }
}

}  // namespace

ComplexFFT::ComplexFFT(std::size_t n) : n_(n) {
  check_size(n, "ComplexFFT");
  // Factor n into 4s, odd radices up to kMaxOddRadix and at most one 2 (the last stage).
  std::size_t rest = n;
  std::vector<int> odd;
  while (rest % 4 == 0) {
    radices_.push_back(4);
    rest /= 4;
  }
  for (int r = 3; r <= static_cast<int>(kMaxOddRadix); r += 2) {
    while (rest % r == 0) {
      odd.push_back(r);
      rest /= r;
    }
  }
  const bool two = rest % 2 == 0;
  if (two) rest /= 2;
  if (rest == 1) {
    radices_.insert(radices_.end(), odd.begin(), odd.end());
    if (two) radices_.push_back(2);
    std::size_t nn = n;
    auto push = [&](double a) {
      twiddles_.push_back(static_cast<float>(std::cos(a)));
      twiddles_.push_back(static_cast<float>(std::sin(a)));
    };
    for (const int radix : radices_) {
      const std::size_t r = static_cast<std::size_t>(radix);
      if (r != 2 && r != 4) {
        for (std::size_t t = 0; t < r; ++t) push(-2.0 * kPi * t / r);
      }
      if (r != 2) {
        for (std::size_t p = 0; p < nn / r; ++p) {
          for (std::size_t k = 1; k < r; ++k) push(-2.0 * kPi * static_cast<double>(k * p) / nn);
        }
      }
      nn /= r;
    }
    return;
  }
  radices_.clear();
  // Bluestein: X[k] = c[k] sum_j (x[j] c[j]) conj(c[k - j]), a circular convolution of size m.
  m_ = 1;
  while (m_ < 2 * n - 1) m_ *= 2;
  inner_ = std::make_unique<ComplexFFT>(m_);
  chirp_re_.resize(n);
  chirp_im_.resize(n);
  for (std::size_t j = 0; j < n; ++j) {
    const unsigned long long j2 = (static_cast<unsigned long long>(j) * j) % (2ULL * n);
    const double a = -kPi * static_cast<double>(j2) / static_cast<double>(n);
    chirp_re_[j] = static_cast<float>(std::cos(a));
    chirp_im_[j] = static_cast<float>(std::sin(a));
  }
  std::vector<float> bre(m_ * L, 0.0f), bim(m_ * L, 0.0f), work(inner_->workspace_floats());
  const double scale = 1.0 / static_cast<double>(m_);
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t idx : {j, (m_ - j) % m_}) {
      bre[idx * L] = chirp_re_[j];
      bim[idx * L] = -chirp_im_[j];
    }
  }
  const Split spec = inner_->transform(bre.data(), bim.data(), work.data());
  kernel_re_.resize(m_);
  kernel_im_.resize(m_);
  for (std::size_t k = 0; k < m_; ++k) {
    kernel_re_[k] = static_cast<float>(spec.re[k * L] * scale);
    kernel_im_[k] = static_cast<float>(spec.im[k * L] * scale);
  }
}

ComplexFFT::~ComplexFFT() = default;

std::size_t ComplexFFT::workspace_floats() const {
  if (m_ == 0) return 2 * n_ * L;
  return 2 * m_ * L + inner_->workspace_floats();
}

void ComplexFFT::forward(float* re, float* im, float* work) const {
  const Split r = transform(re, im, work);
  if (r.re != re) {
    std::memcpy(re, r.re, n_ * L * sizeof(float));
    std::memcpy(im, r.im, n_ * L * sizeof(float));
  }
}

ComplexFFT::Split ComplexFFT::transform(float* re, float* im, float* work) const {
  if (m_ == 0) {
    if (stockham(n_, radices_, twiddles_.data(), re, im, work, work + n_ * L)) {
      return {work, work + n_ * L};
    }
    return {re, im};
  }
  const std::size_t n = n_, m = m_;
  float* ar = work;
  float* ai = work + m * L;
  float* scratch = work + 2 * m * L;
  multiply_lanes(n, chirp_re_.data(), chirp_im_.data(), re, im, ar, ai);
  std::memset(ar + n * L, 0, (m - n) * L * sizeof(float));
  std::memset(ai + n * L, 0, (m - n) * L * sizeof(float));
  const ComplexFFT& inner = *inner_;
  // Forward transform of a; the result sits in (ar, ai) or in scratch.
  float* fr = ar;
  float* fi = ai;
  float* other = scratch;
  if (stockham(m, inner.radices_, inner.twiddles_.data(), ar, ai, scratch, scratch + m * L)) {
    fr = scratch;
    fi = scratch + m * L;
    other = work;
  }
  multiply_lanes(m, kernel_re_.data(), kernel_im_.data(), fr, fi, fr, fi);
  // Inverse transform by swapping real and imaginary parts around a forward transform.
  const float* gr = fi;
  const float* gi = fr;
  if (stockham(m, inner.radices_, inner.twiddles_.data(), fi, fr, other + m * L, other)) {
    gr = other + m * L;
    gi = other;
  }
  // The inverse's (real, imaginary) parts are (gi, gr).
  multiply_lanes(n, chirp_re_.data(), chirp_im_.data(), gi, gr, re, im);
  return {re, im};
}

RealFFT::RealFFT(std::size_t n) : n_(n), inner_(n % 2 == 0 ? n / 2 : n) {
  check_size(n, "RealFFT");
  if (n % 2 == 0) {
    post_re_.resize(n / 2 + 1);
    post_im_.resize(n / 2 + 1);
    for (std::size_t k = 0; k <= n / 2; ++k) {
      const double a = -2.0 * kPi * static_cast<double>(k) / static_cast<double>(n);
      post_re_[k] = static_cast<float>(std::cos(a));
      post_im_[k] = static_cast<float>(std::sin(a));
    }
  }
}

std::size_t RealFFT::workspace_floats() const {
  return 2 * inner_.size() * L + inner_.workspace_floats();
}

void RealFFT::forward(const float* x, float* out_re, float* out_im, float* work) const {
  const std::size_t c = inner_.size();
  float* zr = work;
  float* zi = work + c * L;
  float* inner_work = work + 2 * c * L;
  if (n_ % 2 == 1) {
    std::memcpy(zr, x, c * L * sizeof(float));
    std::memset(zi, 0, c * L * sizeof(float));
    inner_.forward(zr, zi, inner_work);
    std::memcpy(out_re, zr, bins() * L * sizeof(float));
    std::memcpy(out_im, zi, bins() * L * sizeof(float));
    return;
  }
  for (std::size_t j = 0; j < c; ++j) {
    std::memcpy(zr + j * L, x + 2 * j * L, L * sizeof(float));
    std::memcpy(zi + j * L, x + (2 * j + 1) * L, L * sizeof(float));
  }
  forward_split(zr, zi, out_re, out_im, work);
}

void RealFFT::forward_split(float* even, float* odd, float* out_re, float* out_im,
                            float* work) const {
  if (n_ % 2 == 1) throw std::logic_error("RealFFT::forward_split needs an even size");
  // z[j] = x[2j] + i x[2j+1]; Z = FFT_{n/2}(z); X[k] = E[k] + w^k O[k] with
  // E = (Z[k] + conj Z[h-k]) / 2 and O = (Z[k] - conj Z[h-k]) / 2i.
  const std::size_t c = inner_.size();
  const ComplexFFT::Split z = inner_.transform(even, odd, work + 2 * c * L);
  real_post(c, z.re, z.im, post_re_.data(), post_im_.data(), out_re, out_im);
}

}  // namespace ssondo
