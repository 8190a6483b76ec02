/* Per-row histograms on the host: counting (encanalyze._backends._portable.histogram_rows) and
   re-binning (encanalyze._histograms._rebin), the portable rules' operations in the same order
   and in the same dtype (float or double, as the caller's work dtype), compiled without
   floating-point contraction. Counts are float64, exact below 2**53. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#define WIDE_EVALUATION 1 /* float arithmetic is not done in float: refuse the float32 rules */
#endif

/* floor(t) kept within [0, top], as an index: clamping first gives the same whole number
   (floor is monotone, the bounds whole), then truncation is floor (t >= 0); NaN gives 0.
   The two selects are maxss/minss (maxsd/minsd) where SSE2 is there: branches on data-dependent
   sides (a ReLU's zeros at the range's low end) cost more than the whole count. */
#if defined(__SSE2__)
#include <emmintrin.h>
static inline int64_t index_f(float t, float top) {
  __m128 m = _mm_min_ss(_mm_max_ss(_mm_set_ss(t), _mm_setzero_ps()), _mm_set_ss(top));
  return (int64_t)_mm_cvtss_f32(m);
}
static inline int64_t index_d(double t, double top) {
  __m128d m = _mm_min_sd(_mm_max_sd(_mm_set_sd(t), _mm_setzero_pd()), _mm_set_sd(top));
  return (int64_t)_mm_cvtsd_f64(m);
}
#else
static inline int64_t index_f(float t, float top) {
  t = t > 0.0f ? t : 0.0f;
  return (int64_t)(t < top ? t : top);
}
static inline int64_t index_d(double t, double top) {
  t = t > 0.0 ? t : 0.0;
  return (int64_t)(t < top ? t : top);
}
#endif
/* Loops that vectorise get an AVX2 twin where the compiler can dispatch between them at load
   time (the same IEEE operations lane by lane, contraction off: the same numbers). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define FLOOR_INDEX(t, top) \
  (sizeof(t) == sizeof(float) ? index_f((float)(t), (float)(top)) : index_d((double)(t), (double)(top)))

/* counts[r, :] += the bins of rows[r, :cols] (row stride `stride` values) over [lo[r], hi[r]]:
   bin = clip(floor((x - lo) / (hi - lo) * B), 0, B - 1); NaN values are left out. Long rows
   count into four interleaved tables (runs of equal values, such as a ReLU's zeros, would
   otherwise wait on each other's increments), added at the end: whole numbers, exact.
   Returns 0, or -1 where the tables could not be allocated. */
#define COUNT_ROWS(NAME, T)                                                                    \
  int NAME(int64_t rows, int64_t cols, int64_t stride, const T *x, const T *lo, const T *hi,     \
           int64_t bins, double *counts) {                                                      \
    const T top = (T)(bins - 1), scale = (T)bins;                                               \
    const int split = cols >= 8 * bins;                                                         \
    double *tables = split ? calloc((size_t)(4 * bins), sizeof(double)) : NULL;                 \
    if (split && tables == NULL) return -1;                                                     \
    for (int64_t r = 0; r < rows; r++) {                                                        \
      const T low = lo[r], width = hi[r] - lo[r];                                               \
      const T *v = x + r * stride;                                                              \
      double *c = counts + r * bins;                                                            \
      if (!split) {                                                                             \
        for (int64_t i = 0; i < cols; i++) {                                                    \
          T t = (v[i] - low) / width;                                                           \
          t = t * scale;                                                                        \
          c[FLOOR_INDEX(t, top)] += t == t ? 1.0 : 0.0; /* NaN: adds 0 */                      \
        }                                                                                       \
        continue;                                                                               \
      }                                                                                         \
      int64_t i = 0;                                                                            \
      for (; i + 4 <= cols; i += 4)                                                             \
        for (int64_t u = 0; u < 4; u++) {                                                       \
          T t = (v[i + u] - low) / width;                                                       \
          t = t * scale;                                                                        \
          tables[u * bins + FLOOR_INDEX(t, top)] += t == t ? 1.0 : 0.0;                         \
        }                                                                                       \
      for (; i < cols; i++) {                                                                   \
        T t = (v[i] - low) / width;                                                             \
        t = t * scale;                                                                          \
        tables[FLOOR_INDEX(t, top)] += t == t ? 1.0 : 0.0;                                      \
      }                                                                                         \
      for (int64_t b = 0; b < bins; b++) {                                                      \
        c[b] += (tables[b] + tables[bins + b]) + (tables[2 * bins + b] + tables[3 * bins + b]); \
        tables[b] = tables[bins + b] = tables[2 * bins + b] = tables[3 * bins + b] = 0.0;       \
      }                                                                                         \
    }                                                                                           \
    free(tables);                                                                               \
    return 0;                                                                                   \
  }

COUNT_ROWS(encanalyze_count_rows_f64, double)
#ifndef WIDE_EVALUATION
COUNT_ROWS(encanalyze_count_rows_f32, float)
#else
int encanalyze_count_rows_f32(int64_t rows, int64_t cols, int64_t stride, const float *x,
                              const float *lo, const float *hi, int64_t bins, double *counts) {
  return -2;
}
#endif

/* out[r, :] = rows' counts (B bins over [lo, hi]) moved onto B bins over [new_lo, new_hi],
   exactly as encanalyze._histograms._rebin: for old bin k starting at a = lo + w_old k,
   j = clip(floor((a - new_lo) / w_new), 0, B - 1); the fraction before the target's upper edge,
   before = new_lo + (j + 1) w_new - a, divided by w_old only strictly inside (0, w_old);
   part = min(round(fraction c), c) in T (float64 for counts past 2**24 where T is float) goes
   to j, c - part to min(j + 1, B - 1); out = moved + rest. Rows with lo > hi are re-binned
   over [0, 1] onto [0, 1], as the rule does. `scratch` holds 3 B doubles; B < 2**31.
   The first loop has no scattered stores and no branches: it vectorises (selects written as
   comparisons, the index through int32, which holds it). The targets j grow with k, so the
   scatter of the rule's bincount is a running sum per target, added in k order from 0.0 as
   bincount adds: the same sums (where they did not grow, += keeps any order exact for whole
   counts). */
#define REBIN_ROWS(NAME, T, ABS, SIGN, BIG)                                                    \
  VECTOR_CLONES int NAME(int64_t rows, int64_t bins, const double *counts, const T *lo, const T *hi,          \
           const T *new_lo, const T *new_hi, double *scratch, double *out) {                    \
    const T nb = (T)bins, last = (T)(bins - 1);                                                 \
    const int narrow = sizeof(T) < sizeof(double);                                              \
    const int32_t nbins = (int32_t)bins;                                                        \
    double *moved = scratch, *parts = scratch + bins;                                           \
    int32_t *at = (int32_t *)(scratch + 2 * bins);                                              \
    for (int64_t r = 0; r < rows; r++) {                                                        \
      const int valid = lo[r] <= hi[r];                                                         \
      const T lo_w = valid ? lo[r] : (T)0, hi_w = valid ? hi[r] : (T)1;                         \
      const T nlo = valid ? new_lo[r] : (T)0, nhi = valid ? new_hi[r] : (T)1;                   \
      const T w_old = (hi_w - lo_w) / nb, w_new = (nhi - nlo) / nb;                             \
      const double *c = counts + r * bins;                                                      \
      double *rest = out + r * bins;                                                            \
      for (int32_t k = 0; k < nbins; k++) {                                                     \
        T start = lo_w + w_old * (T)k;                                                          \
        T q = (start - nlo) / w_new;                                                            \
        q = q > (T)0 ? q : (T)0; /* NaN: 0 */                                                   \
        q = q < last ? q : last;                                                                \
        int32_t jk = (int32_t)q; /* q >= 0: truncation is floor */                              \
        T j = (T)jk;                                                                            \
        T before = nlo + (j + 1) * w_new - start;                                               \
        int inside = (before > (T)0) & (before < w_old);                                        \
        T ratio = (inside ? before : (T)0) / (inside ? w_old : (T)1);                           \
        T fraction = inside ? ratio : (before >= w_old ? (T)1 : (T)0);                          \
        T cw = (T)c[k];                                                                         \
        T v = fraction * cw, a = ABS(v), rounded = (a + BIG) - BIG; /* half to even: rint */   \
        T part = SIGN(a < BIG ? rounded : a, v);                                                \
        part = part < cw ? part : cw;                                                           \
        at[k] = jk;                                                                             \
        parts[k] = (double)part;                                                                \
      }                                                                                         \
      if (narrow) /* counts past 2**24: their split in float64 */                               \
        for (int64_t k = 0; k < bins; k++)                                                      \
          if (c[k] >= 16777216.0) {                                                             \
            T start = lo_w + w_old * (T)k;                                                      \
            T j = (T)at[k];                                                                     \
            T before = nlo + (j + 1) * w_new - start;                                           \
            int inside = before > 0 && before < w_old;                                          \
            T ratio = (inside ? before : (T)0) / (inside ? w_old : (T)1);                       \
            T fraction = inside ? ratio : (before >= w_old ? (T)1 : (T)0);                      \
            double vw = (double)fraction * c[k], aw = fabs(vw);                                 \
            double big = 4503599627370496.0;                                                    \
            double pw = copysign(aw < big ? (aw + big) - big : aw, vw);                         \
            parts[k] = pw < c[k] ? pw : c[k];                                                   \
          }                                                                                     \
      memset(moved, 0, sizeof(double) * (size_t)bins);                                          \
      memset(rest, 0, sizeof(double) * (size_t)bins);                                           \
      for (int64_t k = 0; k < bins; k++) {                                                      \
        const int32_t next = at[k] + 1 < nbins ? at[k] + 1 : nbins - 1;                         \
        moved[at[k]] += parts[k];                                                               \
        rest[next] += c[k] - parts[k];                                                          \
      }                                                                                         \
      for (int64_t k = 0; k < bins; k++) rest[k] = moved[k] + rest[k];                          \
    }                                                                                           \
    return 0;                                                                                   \
  }

REBIN_ROWS(encanalyze_rebin_rows_f64, double, fabs, copysign, 4503599627370496.0)
#ifndef WIDE_EVALUATION
REBIN_ROWS(encanalyze_rebin_rows_f32, float, fabsf, copysignf, 8388608.0f)
#else
int encanalyze_rebin_rows_f32(int64_t rows, int64_t bins, const double *counts, const float *lo,
                              const float *hi, const float *new_lo, const float *new_hi,
                              double *scratch, double *out) {
  return -2;
}
#endif
