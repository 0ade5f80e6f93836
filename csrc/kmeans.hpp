// k-means kernels: cache-blocked nearest-centroid search, centroid accumulation, greedy
// k-means++ seeding and centroid updates (Lloyd and mini-batch). Plain C++17 on raw pointers.
//
// Distances use ||x||^2 - 2 x.c + ||c||^2 with a register-blocked dot-product micro-kernel
// written with vec8.hpp (x86-64-v3, i.e. AVX2+FMA, chosen at load time with GCC; the
// baseline build otherwise). Rows are float32 or IEEE
// half (stored as uint16); half rows are converted one tile at a time into a float scratch
// tile, never as a whole array. With the cosine metric rows are normalised on the fly
// (spherical k-means) and the distance is 1 - cos(x, c).
//
// Every entry point validates its input and throws std::invalid_argument naming the row and
// the problem (NaN/inf values, an all-zero row with the cosine metric, bad sizes).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ssondo {
namespace kmeans {

enum class DType { f32, f16 };
enum class Metric { euclidean, cosine };

// n rows of d values, row-major and contiguous: float32, or IEEE half stored as uint16.
struct Rows {
  const void* data = nullptr;
  DType dtype = DType::f32;
  std::size_t n = 0;
  std::size_t d = 0;
  // Row numbers used in error messages: row_ids[i] when given, else row_offset + i.
  std::int64_t row_offset = 0;
  const std::int64_t* row_ids = nullptr;
};

// IEEE 754 binary16 -> binary32 (exact, including subnormals, inf and NaN).
float half_to_float(std::uint16_t h);

// Copies the rows into out [n x d] as float32, normalised to unit length for Metric::cosine.
// Throws on NaN/inf values and, for cosine, on all-zero rows.
void prepare_rows(const Rows& x, Metric metric, float* out);

// Nearest centroid of every row. centroids: [k x d] float32 (any length for cosine, they are
// normalised internally). Outputs (each may be null):
//   labels [n]  index of the nearest centroid (lowest index on ties);
//   dist   [n]  squared Euclidean distance, or 1 - cos for Metric::cosine (clamped at 0);
//   sums   [k x d] += the (normalised, for cosine) rows of each cluster, in double;
//   counts [k]  += the number of rows assigned to each cluster.
// Threaded with ssondo::parallel_for; for a given thread count the result is deterministic.
void assign(const Rows& x, const float* centroids, std::size_t k, Metric metric,
            std::int32_t* labels, float* dist, double* sums, std::int64_t* counts);

// Squared Euclidean distances out [n x m] between float rows x [n x d] and c [m x d].
void sq_distances(const float* x, std::size_t n, const float* c, std::size_t m, std::size_t d,
                  float* out);

// Greedy k-means++ seeding (Arthur & Vassilvitskii; greedy variant with n_trials candidates
// per step, as in scikit-learn) on float rows x [n x d] with squared Euclidean distances.
// Writes k row indices into chosen. Deterministic for a given seed and thread count.
// n_trials <= 0 picks 2 + floor(ln k) rounded up to a multiple of 6 (the kernel's row block,
// computed at the same cost). Duplicated points are never picked twice while a point
// at positive distance remains; if all remaining points coincide with centres, an index is
// drawn uniformly.
void kmeanspp(const float* x, std::size_t n, std::size_t d, std::size_t k, int n_trials,
              std::uint64_t seed, std::int64_t* chosen);

// Centroid update from accumulated sums [k x d] and counts [k].
//   lloyd = true:  c_j = sums_j / counts_j (weights ignored);
//   lloyd = false: mini-batch update with per-centroid learning rate counts_j / (w_j + counts_j)
//                  (Sculley 2010, accumulated over the batch): c_j = (w_j c_j + sums_j) /
//                  (w_j + counts_j), then w_j += counts_j.
// Clusters with counts_j == 0 keep their centroid. For cosine, centroids are renormalised (a
// zero mean keeps the old centroid). Returns the number of clusters with counts_j == 0.
std::size_t update_centroids(float* centroids, double* weights, const double* sums,
                             const std::int64_t* counts, std::size_t k, std::size_t d,
                             Metric metric, bool lloyd);

}  // namespace kmeans
}  // namespace ssondo
