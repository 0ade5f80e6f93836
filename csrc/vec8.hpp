// V8: eight floats operated on together, the unit of the lane layout in fft.hpp.
//
// With GCC/Clang it is a generic vector type (compiled to SSE2 pairs on baseline x86-64, to
// NEON on ARM); otherwise a plain struct the optimiser may vectorise. Loads and stores are
// unaligned-safe (memcpy).
#pragma once

#include <cstring>

// Marks a hot kernel to be compiled twice, for AVX2 and for the baseline, with the variant
// chosen at load time (GCC/Clang function multi-versioning on x86-64 ELF). No -march flags.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__)
#define SSONDO_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define SSONDO_MULTIVERSION
#endif

namespace ssondo {

#if defined(__GNUC__)
// Only inline helpers pass V8 by value; no ABI boundary is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V8 __attribute__((vector_size(32)));
inline V8 v8_splat(float x) { return V8{x, x, x, x, x, x, x, x}; }
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
#endif

inline V8 v8_load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void v8_store(float* p, V8 v) { std::memcpy(p, &v, sizeof v); }

}  // namespace ssondo
