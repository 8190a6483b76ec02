/* The SQNR cells search (encanalyze._rules.sqnr.noise_by_cells) for float64 host arrays.

   The same arithmetic as the portable rule, operation for operation (compiled without
   floating-point contraction), one row at a time: midpoints, prefix sums P0, P1, P2, then
   per candidate the two clipping boundaries checked against the per-bin rounding rule, the
   n interior run boundaries and the noise. Nothing Python-specific: loaded with ctypes, which
   releases the GIL for the call, so rows split between threads run in parallel. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static double clamp(double x, double lo, double hi) {
  return x > hi ? hi : (x >= lo ? x : lo); /* NaN: lo */
}

/* ceil(x) kept within [lo, hi] (whole numbers), as an index: clamping first is the same,
   since ceil is monotone; the truncation then rounds up by hand (no libm call) */
static int64_t run_boundary(double x, double lo, double hi) {
  x = clamp(x, lo, hi);
  int64_t i = (int64_t)x;
  return i + ((double)i < x);
}

/* The interior run boundaries k = 1..n: s_a = sum (2k - 1) P0[b_k], s_b = sum P0[b_k],
   s_c = sum P1[b_k] (in order of k). Whole-number prefix counts add exactly in any order, so
   s_a and s_b run as two sums each (odd and even k), joined at the end. */
static void interior_sums(double alpha, double beta, double b0, double bn, int64_t n,
                          const double *p0, const double *p1, int64_t bins, double *out_a,
                          double *out_b, double *out_c) {
  double s_a0 = 0.0, s_a1 = 0.0, s_b0 = 0.0, s_b1 = 0.0, s_c = 0.0;
  int64_t k = 1;
#if defined(__SSE2__)
  if (bins < INT32_MAX) { /* two k at a time: the same operations, lane by lane */
    const __m128d va = _mm_set1_pd(alpha), vb = _mm_set1_pd(beta);
    const __m128d lo = _mm_set1_pd(b0), hi = _mm_set1_pd(bn), two = _mm_set1_pd(2.0);
    __m128d kk = _mm_set_pd(2.0, 1.0), sa = _mm_setzero_pd(), sb = _mm_setzero_pd();
    for (; k + 1 <= n; k += 2) {
      __m128d x = _mm_add_pd(va, _mm_mul_pd(vb, kk));
      x = _mm_min_pd(_mm_max_pd(x, lo), hi); /* NaN: lo (max returns its second operand) */
      __m128i t = _mm_cvttpd_epi32(x);
      /* round the truncation up where it fell below x: ceil, as an index */
      __m128i up = _mm_castpd_si128(_mm_cmplt_pd(_mm_cvtepi32_pd(t), x));
      t = _mm_sub_epi32(t, _mm_shuffle_epi32(up, _MM_SHUFFLE(3, 3, 2, 0)));
      int i = _mm_cvtsi128_si32(t), i2 = _mm_cvtsi128_si32(_mm_shuffle_epi32(t, 1));
      __m128d g = _mm_set_pd(p0[i2], p0[i]);
      sa = _mm_add_pd(sa, _mm_mul_pd(_mm_sub_pd(_mm_mul_pd(two, kk), _mm_set1_pd(1.0)), g));
      sb = _mm_add_pd(sb, g);
      s_c += p1[i];
      s_c += p1[i2];
      kk = _mm_add_pd(kk, two);
    }
    double lanes[2];
    _mm_storeu_pd(lanes, sa);
    s_a0 = lanes[0];
    s_a1 = lanes[1];
    _mm_storeu_pd(lanes, sb);
    s_b0 = lanes[0];
    s_b1 = lanes[1];
  }
#endif
  for (; k + 1 <= n; k += 2) {
    int64_t i = run_boundary(alpha + beta * (double)k, b0, bn);
    int64_t i2 = run_boundary(alpha + beta * (double)(k + 1), b0, bn);
    s_a0 += (double)(2 * k - 1) * p0[i];
    s_a1 += (double)(2 * k + 1) * p0[i2];
    s_b0 += p0[i];
    s_b1 += p0[i2];
    s_c += p1[i];
    s_c += p1[i2];
  }
  if (k <= n) {
    int64_t i = run_boundary(alpha + beta * (double)k, b0, bn);
    s_a0 += (double)(2 * k - 1) * p0[i];
    s_b0 += p0[i];
    s_c += p1[i];
  }
  *out_a = s_a0 + s_a1;
  *out_b = s_b0 + s_b1;
  *out_c = s_c;
}

/* first bin of run k (0 or n + 1), exactly as the per-bin round() decides */
static double clipping_boundary(double k, double alpha, double beta, double d, double o,
                                const double *m, int64_t bins) {
  double b = clamp(ceil(alpha + beta * k), 0.0, (double)bins);
  double below = clamp(b - 1, 0.0, (double)(bins - 1));
  double q_below = nearbyint(m[(int64_t)below] / d - o);
  if (b > 0 && q_below >= k) b = b - 1;
  double at = clamp(b, 0.0, (double)(bins - 1));
  double q_at = nearbyint(m[(int64_t)at] / d - o);
  if (b < bins && q_at < k) b = b + 1;
  return b;
}

/* noise[r, c] for rows x bins counts, rows x (bins + 1) edges (float64, or float32 where
   edges_f32), rows x cands deltas/offsets; each row's edges are widened to float64 and
   multiplied by scale[r] (its power-of-two factor) first, as the portable rule does.
   Returns 0, or -1 when scratch memory could not be allocated. */
int encanalyze_noise_by_cells(int64_t rows, int64_t bins, int64_t cands, int64_t n, double gamma,
                              const double *counts, const void *edges, int64_t edges_f32,
                              const double *scale, const double *deltas, const double *offsets,
                              double *noise) {
  double *m = malloc(sizeof(double) * (size_t)(5 * (bins + 1)));
  if (m == NULL) return -1;
  double *p0 = m + (bins + 1), *p1 = p0 + (bins + 1), *p2 = p1 + (bins + 1);
  double *e = p2 + (bins + 1);
  for (int64_t r = 0; r < rows; r++) {
    const double *c = counts + r * bins;
    for (int64_t i = 0; i <= bins; i++)
      e[i] = (edges_f32 ? (double)((const float *)edges)[r * (bins + 1) + i]
                        : ((const double *)edges)[r * (bins + 1) + i]) * scale[r];
    p0[0] = p1[0] = p2[0] = 0.0;
    for (int64_t i = 0; i < bins; i++) {
      double a = e[i], b = e[i + 1];
      double mid = (a + b) / 2;
      if (isinf(mid)) mid = a / 2 + b / 2;
      m[i] = mid;
      double cm = c[i] * mid;
      p0[i + 1] = p0[i] + c[i];
      p1[i + 1] = p1[i] + cm;
      p2[i + 1] = p2[i] + cm * mid;
    }
    double e0 = e[0];
    double w = (e[bins] - e0) / (double)bins;
    double tot0 = p0[bins], tot1 = p1[bins], tot2 = p2[bins];
    for (int64_t j = 0; j < cands; j++) {
      double d = deltas[r * cands + j], o = offsets[r * cands + j];
      double beta = d / w;
      double alpha = ((o - 0.5) * d - e0) / w - 0.5;
      double b0 = clipping_boundary(0.0, alpha, beta, d, o, m, bins);
      double bn = clipping_boundary((double)(n + 1), alpha, beta, d, o, m, bins);
      double s_a, s_b, s_c;
      interior_sums(alpha, beta, b0, bn, n, p0, p1, bins, &s_a, &s_b, &s_c);
      int64_t i0 = (int64_t)b0, in = (int64_t)bn;
      double p0_0 = p0[i0], p1_0 = p1[i0], p2_0 = p2[i0];
      double p0_n = p0[in], p1_n = p1[in], p2_n = p2[in];
      double t0 = o * d, tn = (o + n) * d;
      double low = t0 * t0 * p0_0 - 2 * t0 * p1_0 + p2_0;
      double high = tn * tn * (tot0 - p0_n) - 2 * tn * (tot1 - p1_n) + (tot2 - p2_n);
      double steps_sq = (o + n) * (o + n) * p0_n - o * o * p0_0 - s_a - 2 * o * s_b;
      double steps = s_c - (o + n) * p1_n + o * p1_0;
      double interior = d * d * steps_sq + 2 * d * steps + (p2_n - p2_0);
      noise[r * cands + j] = gamma * (low + high) + interior;
    }
  }
  free(m);
  return 0;
}
