// V8: eight floats operated on together, the unit of the lane layout in fft.hpp; V4D: four
// doubles, the same 32 bytes, for kernels written once for float and double (Vec<T>).
//
// With GCC/Clang they are generic vector types (compiled to SSE2 pairs on baseline x86-64, to
// NEON on ARM); otherwise (or with -DSSONDO_VEC8_PORTABLE, to test that path) plain structs
// the optimiser may vectorise. Loads and stores are unaligned-safe (memcpy). U8 holds eight
// uint32 lanes, for bit manipulation of V8 only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

// Marks a hot kernel to be compiled twice, for AVX2 and for the baseline, with the variant
// chosen at load time (GCC function multi-versioning on x86-64 ELF). No -march flags. Clang
// refuses 256-bit vector values in the baseline clone of such a kernel ("changes the ABI"),
// so a Clang build has the baseline only (add -march flags to CMAKE_CXX_FLAGS for more).
// SSONDO_MULTIVERSION_FMA does the same for x86-64-v3 (AVX2 with FMA and F16C, e.g. Haswell,
// Zen): there a * b + c in one expression (v8_fma) is contracted to one fused multiply-add,
// rounded once; the baseline rounds the product and the sum.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define SSONDO_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#define SSONDO_MULTIVERSION_FMA __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SSONDO_MULTIVERSION
#define SSONDO_MULTIVERSION_FMA
#endif

// For the larger helpers called from those kernels: an out-of-line copy would be compiled for
// the baseline only (and take V8 through memory).
#if defined(__GNUC__)
#define SSONDO_FORCE_INLINE inline __attribute__((always_inline))
#else
#define SSONDO_FORCE_INLINE inline
#endif

namespace ssondo {

#if defined(__GNUC__) && !defined(SSONDO_VEC8_PORTABLE)
// Only inline helpers pass V8 by value; no ABI boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V8 __attribute__((vector_size(32)));
typedef double V4D __attribute__((vector_size(32)));
typedef std::uint32_t U8 __attribute__((vector_size(32)));
// GCC splats by a shuffle of lane 0 (one broadcast instruction: it builds the initialiser
// {x, x, ...} of a loop variable with eight lane inserts).
#if defined(__clang__)
inline V8 v8_splat(float x) { return V8{x, x, x, x, x, x, x, x}; }
inline V4D v4d_splat(double x) { return V4D{x, x, x, x}; }
#else
inline V8 v8_splat(float x) { return __builtin_shuffle(V8{x}, U8{}); }
inline V4D v4d_splat(double x) {
  typedef std::uint64_t U4 __attribute__((vector_size(32)));
  return __builtin_shuffle(V4D{x}, U4{});
}
#endif
// Per lane: a < b ? t : f (V8 or V4D).
template <typename V>
inline V v8_lt_select(V a, V b, V t, V f) {
  return a < b ? t : f;
}
// Per lane: a == b ? t : f.
inline U8 u8_eq_select(U8 a, std::uint32_t b, U8 t, U8 f) { return a == b ? t : f; }
// Eight uint16 values, widened to uint32 lanes.
inline U8 u8_load_u16(const std::uint16_t* p) {
  typedef std::uint16_t U16x8 __attribute__((vector_size(16)));
  U16x8 h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, U8);
}
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
// N lanes of T: V8 = VecN<float, 8>, V4D = VecN<double, 4>.
template <typename T, int N>
struct VecN {
  T v[N];
  T& operator[](int i) { return v[i]; }
  T operator[](int i) const { return v[i]; }
};
typedef VecN<float, 8> V8;
typedef VecN<double, 4> V4D;
inline V8 v8_splat(float x) { return V8{{x, x, x, x, x, x, x, x}}; }
inline V4D v4d_splat(double x) { return V4D{{x, x, x, x}}; }
template <typename T>
struct NoDeduce {
  typedef T type;
};
#define SSONDO_V8_OP(op)                                                                \
  template <typename T, int N>                                                         \
  inline VecN<T, N> operator op(VecN<T, N> a, VecN<T, N> b) {                          \
    for (int l = 0; l < N; ++l) a.v[l] = a.v[l] op b.v[l];                             \
    return a;                                                                          \
  }                                                                                    \
  template <typename T, int N>                                                         \
  inline VecN<T, N> operator op(VecN<T, N> a, typename NoDeduce<T>::type b) {          \
    for (int l = 0; l < N; ++l) a.v[l] = a.v[l] op b;                                  \
    return a;                                                                          \
  }                                                                                    \
  template <typename T, int N>                                                         \
  inline VecN<T, N> operator op(typename NoDeduce<T>::type a, VecN<T, N> b) {          \
    for (int l = 0; l < N; ++l) b.v[l] = a op b.v[l];                                  \
    return b;                                                                          \
  }
SSONDO_V8_OP(+)
SSONDO_V8_OP(-)
SSONDO_V8_OP(*)
#undef SSONDO_V8_OP
template <typename T, int N>
inline VecN<T, N> v8_lt_select(VecN<T, N> a, VecN<T, N> b, VecN<T, N> t, VecN<T, N> f) {
  for (int l = 0; l < N; ++l) t.v[l] = a.v[l] < b.v[l] ? t.v[l] : f.v[l];
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
  }                                                                       \
  inline U8 operator op(U8 a, U8 b) {                                     \
    for (int l = 0; l < 8; ++l) a.v[l] = a.v[l] op b.v[l];                \
    return a;                                                             \
  }
SSONDO_U8_OP(+)
SSONDO_U8_OP(&)
SSONDO_U8_OP(|)
SSONDO_U8_OP(>>)
SSONDO_U8_OP(<<)
#undef SSONDO_U8_OP
inline U8 u8_eq_select(U8 a, std::uint32_t b, U8 t, U8 f) {
  for (int l = 0; l < 8; ++l) t.v[l] = a.v[l] == b ? t.v[l] : f.v[l];
  return t;
}
inline U8 u8_load_u16(const std::uint16_t* p) {
  U8 u;
  for (int l = 0; l < 8; ++l) u.v[l] = p[l];
  return u;
}
#endif

// Vec<T>::V: the 32-byte vector of T (V8 for float, V4D for double); Vec<T>::n: its lanes.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef V8 V;
  static constexpr std::size_t n = 8;
  static V splat(float x) { return v8_splat(x); }
};
template <>
struct Vec<double> {
  typedef V4D V;
  static constexpr std::size_t n = 4;
  static V splat(double x) { return v4d_splat(x); }
};

inline V8 v8_load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void v8_store(float* p, V8 v) { std::memcpy(p, &v, sizeof v); }
// Vec<T> loads and stores: all lanes, or the first m < Vec<T>::n (a tail; the other lanes load
// as zero and are not stored).
template <typename T>
inline typename Vec<T>::V vec_load(const T* p) {
  typename Vec<T>::V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void vec_store(T* p, typename Vec<T>::V v) {
  std::memcpy(p, &v, sizeof v);
}
// (Lane by lane, in registers, under a test of every lane: a copy of m values would become a
// memcpy call through memory.)
template <typename T>
SSONDO_FORCE_INLINE typename Vec<T>::V vec_load_first(const T* p, std::size_t m) {
  typename Vec<T>::V v = Vec<T>::splat(T(0));
  for (std::size_t l = 0; l < Vec<T>::n; ++l) {
    if (l < m) v[l] = p[l];
  }
  return v;
}
template <typename T>
SSONDO_FORCE_INLINE void vec_store_first(T* p, typename Vec<T>::V v, std::size_t m) {
  for (std::size_t l = 0; l < Vec<T>::n; ++l) {
    if (l < m) p[l] = v[l];
  }
}
// Per lane: min(a, b) and max(a, b) as a < b ? a : b and a > b ? a : b (a NaN lane in a gives
// b, as the x86 min/max instructions do).
template <typename V>
inline V vec_min(V a, V b) {
  return v8_lt_select(a, b, a, b);
}
template <typename V>
inline V vec_max(V a, V b) {
  return v8_lt_select(b, a, a, b);
}
// a * b + c per lane: one fused multiply-add in SSONDO_MULTIVERSION_FMA's x86-64-v3 clone (and
// wherever the target has FMA), a multiply and an add otherwise.
template <typename V>
inline V v8_fma(V a, V b, V c) {
  return a * b + c;
}
// The sum of the lanes of a V8 or V4D in a fixed order: each lane l in the lower half plus
// lane l + n/2, then those partial sums pairwise: ((v0 + v4) + (v1 + v5)) + ((v2 + v6) +
// (v3 + v7)) for V8, (v0 + v2) + (v1 + v3) for V4D.
template <typename V>
SSONDO_FORCE_INLINE auto v8_sum(V v) -> typename std::decay<decltype(v[0])>::type {
  typedef typename std::decay<decltype(v[0])>::type T;
  constexpr int n = sizeof(V) / sizeof(T), h = n / 2;
  T s[h];
  for (int l = 0; l < h; ++l) s[l] = v[l] + v[l + h];
  for (int w = 1; w < h; w *= 2)
    for (int l = 0; l < h; l += 2 * w) s[l] += s[l + w];
  return s[0];
}
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

// Eight IEEE binary16 values (stored as uint16) -> float, exact (subnormals, inf and NaN
// included; the same bits as kmeans::half_to_float). Exponent and mantissa are moved into
// place and the exponent rebiased by 127 - 15; an all-ones exponent (inf/NaN) gets all ones;
// a zero exponent (zero/subnormal m 2^-24) is built as 2^-14 (1 + m 2^-10) and 2^-14 is
// subtracted, exactly.
SSONDO_FORCE_INLINE V8 v8_from_half(const std::uint16_t* h) {
  const U8 u = u8_load_u16(h);
  const U8 em = (u & 0x7fffu) << 13;
  const U8 e = em & 0x0f800000u;
  const U8 normal = em + ((127u - 15u) << 23);
  const U8 special = u8_eq_select(e, 0x0f800000u, normal + ((128u - 16u) << 23), normal);
  const U8 sub = v8_bits(v8_from_bits(normal + (1u << 23)) - 6.103515625e-05f);  // 2^-14
  return v8_from_bits(u8_eq_select(e, 0u, sub, special) | ((u & 0x8000u) << 16));
}

}  // namespace ssondo
