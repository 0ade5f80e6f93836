// V8: eight floats operated on together, the unit of the lane layout in fft.hpp.
//
// With GCC/Clang it is a generic vector type (compiled to SSE2 pairs on baseline x86-64, to
// NEON on ARM); otherwise a plain struct the optimiser may vectorise. Loads and stores are
// unaligned-safe (memcpy). U8 holds eight uint32 lanes, for bit manipulation of V8 only.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

// Marks a hot kernel to be compiled twice, for AVX2 and for the baseline, with the variant
// chosen at load time (GCC function multi-versioning on x86-64 ELF). No -march flags. Clang
// refuses 256-bit vector values in the baseline clone of such a kernel ("changes the ABI"),
// so a Clang build has the baseline only (add -march flags to CMAKE_CXX_FLAGS for more).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define SSONDO_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define SSONDO_MULTIVERSION
#endif

// For the larger helpers called from those kernels: an out-of-line copy would be compiled for
// the baseline only (and take V8 through memory).
#if defined(__GNUC__)
#define SSONDO_FORCE_INLINE inline __attribute__((always_inline))
#else
#define SSONDO_FORCE_INLINE inline
#endif

namespace ssondo {

#if defined(__GNUC__)
// Only inline helpers pass V8 by value; no ABI boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V8 __attribute__((vector_size(32)));
typedef std::uint32_t U8 __attribute__((vector_size(32)));
inline V8 v8_splat(float x) { return V8{x, x, x, x, x, x, x, x}; }
// Per lane: a < b ? t : f.
inline V8 v8_lt_select(V8 a, V8 b, V8 t, V8 f) { return a < b ? t : f; }
// Lanes of the concatenation (a, b) picked by the constant indices I (each in [0, 16)).
template <unsigned... I>
inline V8 v8_shuffle(V8 a, V8 b) {
  static_assert(sizeof...(I) == 8, "one index per lane");
#if defined(__clang__)
  return __builtin_shufflevector(a, b, I...);
#else
  return __builtin_shuffle(a, b, U8{I...});
#endif
}
// Transposes the 8 x 8 matrix whose row i is r[i]: interleave pairs of rows, then pairs of
// pairs within each 128-bit half, then combine halves (the classic AVX sequence; on the
// baseline the compiler splits it into SSE shuffles).
SSONDO_FORCE_INLINE void v8_transpose(V8 r[8]) {
  V8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = v8_shuffle<0, 8, 1, 9, 4, 12, 5, 13>(r[i], r[i + 1]);
    t[i + 1] = v8_shuffle<2, 10, 3, 11, 6, 14, 7, 15>(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int k = 0; k < 2; ++k) {
      u[i + 2 * k] = v8_shuffle<0, 1, 8, 9, 4, 5, 12, 13>(t[i + k], t[i + k + 2]);
      u[i + 2 * k + 1] = v8_shuffle<2, 3, 10, 11, 6, 7, 14, 15>(t[i + k], t[i + k + 2]);
    }
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = v8_shuffle<0, 1, 2, 3, 8, 9, 10, 11>(u[i], u[i + 4]);
    r[i + 4] = v8_shuffle<4, 5, 6, 7, 12, 13, 14, 15>(u[i], u[i + 4]);
  }
}
#else
struct V8 {
  float v[8];
  float& operator[](int i) { return v[i]; }
  float operator[](int i) const { return v[i]; }
};
inline V8 v8_splat(float x) { return V8{{x, x, x, x, x, x, x, x}}; }
#define SSONDO_V8_OP(op)                                                   \
  inline V8 operator op(V8 a, V8 b) {                                     \
    for (int l = 0; l < 8; ++l) a.v[l] = a.v[l] op b.v[l];                \
    return a;                                                             \
  }                                                                       \
  inline V8 operator op(V8 a, float b) { return a op v8_splat(b); }       \
  inline V8 operator op(float a, V8 b) { return v8_splat(a) op b; }
SSONDO_V8_OP(+)
SSONDO_V8_OP(-)
SSONDO_V8_OP(*)
#undef SSONDO_V8_OP
inline V8 v8_lt_select(V8 a, V8 b, V8 t, V8 f) {
  for (int l = 0; l < 8; ++l) t.v[l] = a.v[l] < b.v[l] ? t.v[l] : f.v[l];
  return t;
}
SSONDO_FORCE_INLINE void v8_transpose(V8 r[8]) {
  for (int i = 0; i < 8; ++i) {
    for (int j = i + 1; j < 8; ++j) {
      const float x = r[i].v[j];
      r[i].v[j] = r[j].v[i];
      r[j].v[i] = x;
    }
  }
}
struct U8 {
  std::uint32_t v[8];
};
#define SSONDO_U8_OP(op)                                                   \
  inline U8 operator op(U8 a, std::uint32_t b) {                          \
    for (int l = 0; l < 8; ++l) a.v[l] = a.v[l] op b;                     \
    return a;                                                             \
  }
SSONDO_U8_OP(+)
SSONDO_U8_OP(&)
SSONDO_U8_OP(|)
SSONDO_U8_OP(>>)
#undef SSONDO_U8_OP
#endif

inline V8 v8_load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void v8_store(float* p, V8 v) { std::memcpy(p, &v, sizeof v); }
// The bits of each lane, and back.
inline U8 v8_bits(V8 v) {
  U8 u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline V8 v8_from_bits(U8 u) {
  V8 v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// Natural log of each lane, within 1 ulp (relative error < 1e-7) for every positive float,
// subnormals included. log(0) = -inf, log(+inf) = +inf; negative lanes and NaN give NaN.
// x = 2^e m with m in [sqrt(1/2), sqrt(2)) is split off by bit manipulation, then Cephes'
// logf polynomial in f = m - 1 and e log(2) = e (0.693359375 - 2.12194440e-4) in two parts so
// that the first product is exact.
SSONDO_FORCE_INLINE V8 v8_log(V8 x) {
  constexpr float kMinNormal = std::numeric_limits<float>::min();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // Subnormals are scaled by 2^23 into the normal range first.
  const V8 small = v8_lt_select(x, v8_splat(kMinNormal), v8_splat(23.0f), v8_splat(0.0f));
  const V8 xn = v8_lt_select(x, v8_splat(kMinNormal), x * 8388608.0f, x);
  // Adding 1 - sqrt(1/2) in the bit domain (0x3f800000 - 0x3f3504f3) moves the exponent step to
  // m = sqrt(1/2); the biased exponent of the result is e + 127.
  const U8 u = v8_bits(xn) + 0x004afb0du;
  const V8 m = v8_from_bits((u & 0x007fffffu) + 0x3f3504f3u);
  // e + 127 as a float without an int conversion: the bits 0x4b000000 | k are 2^23 + k.
  const V8 e = v8_from_bits((u >> 23) | 0x4b000000u) - (8388608.0f + 127.0f) - small;
  // The degree-8 polynomial by Estrin's scheme (short dependency chains).
  const V8 f = m - 1.0f, z = f * f, z2 = z * z;
  const V8 p01 = 3.3333331174e-1f - 2.4999993993e-1f * f;
  const V8 p23 = 2.0000714765e-1f - 1.6668057665e-1f * f;
  const V8 p45 = 1.4249322787e-1f - 1.2420140846e-1f * f;
  const V8 p67 = 1.1676998740e-1f - 1.1514610310e-1f * f;
  const V8 p = (p01 + p23 * z) + ((p45 + p67 * z) + 7.0376836292e-2f * z2) * z2;
  const V8 y = p * f * z - 2.12194440e-4f * e - 0.5f * z;
  const V8 r = (f + y) + 0.693359375f * e;
  // x <= 0: -inf for zero, NaN below; +inf and NaN pass through.
  const V8 low = v8_lt_select(x, v8_splat(0.0f), v8_splat(std::numeric_limits<float>::quiet_NaN()),
                              v8_splat(-kInf));
  return v8_lt_select(x, v8_splat(kInf), v8_lt_select(v8_splat(0.0f), x, r, low), x);
}

}  // namespace ssondo
