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

/* Loops that vectorise get an AVX2 twin where the compiler can dispatch between them at load
   time (the same IEEE operations lane by lane, contraction off: the same numbers). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* counts[r, :] += the bins of rows[r, :cols] (row stride `stride` values) over [lo[r], hi[r]]:
   bin = clip(floor((x - lo) / (hi - lo) * B), 0, B - 1); NaN values are left out. Values go
   by chunks: their bins first, in a loop that vectorises (NaN takes bin 0 and is counted, then
   taken off bin 0), then the increments. Long rows count into four interleaved tables (runs of
   equal values, such as a ReLU's zeros, would otherwise wait on each other's increments), added
   at the end. Counts are whole numbers: exact in any order. B < 2**31.
   Where `nans` is given, the same pass counts per row its NaN values (nans[r]), its values that
   are not finite (odd[r]) and its finite values outside [lo[r], hi[r]] (outside[r]); where
   `negatives` is given too, it bins and checks |x| instead, and counts the values below 0
   (negatives[r]).
   Returns 0, or -1 where the scratch could not be allocated. */
#define COUNT_CHUNK 512
#define SPLIT_FLUSH (1 << 30) /* values counted into the int32 tables between flushes */

/* c[b] += the four tables' counts of bin b (whole numbers: exact), which start again at 0 */
static void flush_tables(int32_t *tables, int64_t bins, double *c) {
  for (int64_t b = 0; b < bins; b++) {
    c[b] += (double)((int64_t)tables[b] + tables[bins + b] + tables[2 * bins + b] +
                     tables[3 * bins + b]);
    tables[b] = tables[bins + b] = tables[2 * bins + b] = tables[3 * bins + b] = 0;
  }
}
#define BIN_CHUNK(T, CHECK, ABS)                                                                \
  for (int i = 0; i < n; i++) {                                                                 \
    const T value = ABS ? (chunk[i] < (T)0 ? -chunk[i] : chunk[i]) : chunk[i];                  \
    if (ABS) negative += chunk[i] < (T)0;                                                       \
    T t = (value - low_r) / width;                                                              \
    t = t * scale;                                                                              \
    nan += t != t;                                                                              \
    if (CHECK) {                                                                                \
      const int finite = value - value == (T)0;                                                 \
      odd += !finite;                                                                           \
      out += finite & ((value < low_r) | (value > high_r));                                     \
    }                                                                                           \
    t = t > (T)0 ? t : (T)0; /* NaN: 0 */                                                       \
    t = t < top ? t : top;                                                                      \
    at[i] = (int32_t)t; /* t >= 0: truncation is floor */                                       \
  }
#define COUNT_ROWS(NAME, T)                                                                     \
  VECTOR_CLONES int NAME(int64_t rows, int64_t cols, int64_t stride, const T *x, const T *lo,   \
                         const T *hi, int64_t bins, double *counts, int64_t *nans,              \
                         int64_t *odd_out, int64_t *outside, int64_t *negatives) {              \
    const T top = (T)(bins - 1), scale = (T)bins;                                               \
    const int split = cols >= 8 * bins;                                                         \
    int32_t *tables = split ? calloc((size_t)(4 * bins), sizeof(int32_t)) : NULL;               \
    int32_t at[COUNT_CHUNK];                                                                    \
    if (split && tables == NULL) return -1;                                                     \
    for (int64_t r = 0; r < rows; r++) {                                                        \
      const T low_r = lo[r], high_r = hi[r], width = hi[r] - lo[r];                             \
      const T *v = x + r * stride;                                                              \
      double *c = counts + r * bins;                                                            \
      int64_t row_nan = 0, row_odd = 0, row_out = 0, row_negative = 0, flushed = 0;             \
      for (int64_t start = 0; start < cols; start += COUNT_CHUNK) {                             \
        const int n = (int)(cols - start < COUNT_CHUNK ? cols - start : COUNT_CHUNK);           \
        const T *chunk = v + start;                                                             \
        int nan = 0, odd = 0, out = 0, negative = 0;                                            \
        if (negatives != NULL) {                                                                \
          BIN_CHUNK(T, 1, 1)                                                                    \
        } else if (nans != NULL) {                                                              \
          BIN_CHUNK(T, 1, 0)                                                                    \
        } else {                                                                                \
          BIN_CHUNK(T, 0, 0)                                                                    \
        }                                                                                       \
        row_nan += nan, row_odd += odd, row_out += out, row_negative += negative;               \
        if (split) {                                                                            \
          int i = 0;                                                                            \
          for (; i + 4 <= n; i += 4) {                                                          \
            tables[at[i]] += 1;                                                                 \
            tables[bins + at[i + 1]] += 1;                                                      \
            tables[2 * bins + at[i + 2]] += 1;                                                  \
            tables[3 * bins + at[i + 3]] += 1;                                                  \
          }                                                                                     \
          for (; i < n; i++) tables[at[i]] += 1;                                                \
          tables[0] -= nan;                                                                     \
          if (start - flushed >= SPLIT_FLUSH) {                                                 \
            flush_tables(tables, bins, c);                                                      \
            flushed = start;                                                                    \
          }                                                                                     \
        } else {                                                                                \
          for (int i = 0; i < n; i++) c[at[i]] += 1.0;                                          \
          c[0] -= (double)nan;                                                                  \
        }                                                                                       \
      }                                                                                         \
      if (nans != NULL) nans[r] = row_nan, odd_out[r] = row_odd, outside[r] = row_out;          \
      if (negatives != NULL) negatives[r] = row_negative;                                       \
      if (split) flush_tables(tables, bins, c);                                                 \
    }                                                                                           \
    free(tables);                                                                               \
    return 0;                                                                                   \
  }

COUNT_ROWS(encanalyze_count_rows_f64, double)
#ifndef WIDE_EVALUATION
COUNT_ROWS(encanalyze_count_rows_f32, float)
#else
int encanalyze_count_rows_f32(int64_t rows, int64_t cols, int64_t stride, const float *x,
                              const float *lo, const float *hi, int64_t bins, double *counts,
                              int64_t *nans, int64_t *odd_out, int64_t *outside,
                              int64_t *negatives) {
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
