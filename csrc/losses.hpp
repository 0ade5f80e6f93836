// Fused relational distillation losses, forward and backward, computed from Gram matrices.
//
// Every kernel takes the student's and the teacher's Gram matrices G = X X^T (row-major,
// symmetric, B x B; the O(B^2 D) products are left to BLAS), returns the loss, and, when `grad`
// is not null, writes the symmetric B x B matrix
//     S = dL/dG_s + (dL/dG_s)^T,   so that   dL/dX_s = S X_s.
// No kernel allocates more than a few B x B buffers: the RKD angle loss needs O(B^3) time and
// O(B^2) memory instead of the textbook B x B x D tensor. The formulas, and the conventions at
// zero vectors, are documented next to the reference implementations in pyssondo/losses.py.
// T is float or double. Rows are computed independently and their partial sums combined in
// double in a fixed order, so the results do not depend on the thread count.
#pragma once

#include <cstddef>

namespace ssondo {

// RKD angle-wise loss (Park et al. 2019, lenscloth/RKD metric/loss.py):
//   a_ijk = <e_ij, e_kj>,  e_ij = (x_i - x_j) / max(||x_i - x_j||, 1e-12)  (apex j, all B^3),
//   L = (1/B^3) sum_ijk smoothL1(a^s_ijk - a^t_ijk).
// xs [b, ds] and xt [b, dt] are the rows the Grams were made from (translation does not change
// the loss, so centred rows give more accurate distances): pairs whose Gram-derived squared
// distance is tiny relative to their squared norms are re-measured from the rows, so exactly
// coincident rows give exactly zero difference vectors (angle 0, and no gradient through them).
template <typename T>
double rkd_angle_loss(const T* gs, const T* gt, const T* xs, std::size_t ds, const T* xt,
                      std::size_t dt, std::size_t b, T* grad);

// RKD distance-wise loss: d_ij = sqrt(max(G_ii + G_jj - 2 G_ij, 1e-12)) off the diagonal,
// d_ii = 0, each side divided by the mean of its non-zero d, L = mean_ij smoothL1(ds/mu_s -
// dt/mu_t). With b = 1 there is no pair and the loss is 0.
template <typename T>
double rkd_distance_loss(const T* gs, const T* gt, std::size_t b, T* grad);

// Pairwise cosine ("cosine-wise"): C_ij = G_ij / (max(n_i, 1e-12) max(n_j, 1e-12)),
// n_i = sqrt(G_ii); L = (1/B^2) sum_ij (C^s_ij - C^t_ij)^2.
template <typename T>
double pairwise_cosine_loss(const T* gs, const T* gt, std::size_t b, T* grad);

// Similarity preserving (Tung & Mori 2019), batched: `batch` Gram matrices of n x n each
// (gs, gt, grad are [batch, n, n]); each row of G divided by max(its L2 norm, 1e-12),
// L = (1/batch) sum_b ||N(G^t_b) - N(G^s_b)||_F^2 / n^2. batch = 1 is SP over a batch of
// clips; batch = B with n = frames is IUSP.
template <typename T>
double similarity_preserving_loss(const T* gs, const T* gt, std::size_t batch, std::size_t n,
                                  T* grad);

}  // namespace ssondo
