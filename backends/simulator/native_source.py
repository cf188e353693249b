"""The C source of the simulator's compiled loops (built by ``native_build``, called by
``native_loops``): a module of its own because it is one long string.

Each function is the same arithmetic as the torch neuron of ``spikec.core.neurons`` it
replaces, fused over the T steps (IEEE float32 in the same order; see ``native_loops``).
"""

SOURCE = r"""
#include <stdint.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define BLK 512

/* One step of neuron i of a block (v, u, c, a as in signed_if_constant): spike count s. */
#define SIGNED_IF_STEP(s)           \
    float y = v[i] + u[i];          \
    float s = floorf(y);            \
    s = s < low ? low : s;          \
    s = s > high ? high : s;        \
    v[i] = y - s;                   \
    c[i] += s;                      \
    a[i] += fabsf(s);

/* SignedIF driven by the constant current x (rows [r0, r1) of x [rows, F]) for T steps, in
   threshold units u = x / theta (one IEEE division, as torch does it), membrane from v_init:
   v += u; s = clamp(floor(v), low, high); v -= s. count[i] = sum_t s_t; train (if not NULL)
   gets s_t at train[t*tstride + i]. Returns sum |s| over these neurons and steps. */
int64_t signed_if_constant(const float* x, const float* theta, int64_t F, int64_t r0, int64_t r1, int T,
                           float low, float high, float v_init, float* count, int8_t* train, int64_t tstride) {
    int64_t total = 0;
    float u[BLK], v[BLK], c[BLK], a[BLK];
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t f0 = 0; f0 < F; f0 += BLK) {
            int64_t m = F - f0 < BLK ? F - f0 : BLK;
            int64_t i0 = r * F + f0;
            for (int64_t i = 0; i < m; ++i) {
                u[i] = x[i0 + i] / theta[f0 + i];
                v[i] = v_init; c[i] = 0.0f; a[i] = 0.0f;
            }
            if (train) {
                for (int t = 0; t < T; ++t) {
                    int8_t* tr = train + (int64_t)t * tstride + i0;
                    for (int64_t i = 0; i < m; ++i) {
                        SIGNED_IF_STEP(s)
                        tr[i] = (int8_t)s;
                    }
                }
            } else {
                for (int t = 0; t < T; ++t) {
                    for (int64_t i = 0; i < m; ++i) {
                        SIGNED_IF_STEP(s)
                    }
                }
            }
            int64_t acc = 0;  /* a[i] holds an exact integer (below 2^24) */
            for (int64_t i = 0; i < m; ++i) acc += (int64_t)a[i];
            total += acc;
            if (count) for (int64_t i = 0; i < m; ++i) count[i0 + i] = c[i];
        }
    }
    return total;
}

/* The blocks of up to BLK neurons of rows [r0, r1) of a [rows, F] tensor: len neurons from
   feature f0, flat index i0. */
#define FOR_ROW_BLOCKS(F, r0, r1)                                                          \
    for (int64_t r = (r0); r < (r1); ++r)                                                  \
        for (int64_t f0 = 0, len = 0, i0 = 0;                                              \
             f0 < (F) && (len = (F) - f0 < BLK ? (F) - f0 : BLK, i0 = r * (F) + f0, 1); f0 += BLK)

/* Few-spike neurons, binary digits (few_spike.binary_code), rows [r0, r1) of x [rows, F]: a code of
   S steps read in G groups of 8 steps. u = x / theta (one IEEE division);
   n = min(floor((|u| + 2^-S) * 2^(S-1)), 2^S - 1) (float32, in this order); group g (steps
   [8g, min(8g+8, S)), none when 8g >= S) gets sgn(u) * (its bits of n) * 2^(1 - stop) in float64
   at counts[g*N + i] (N = rows*F, i = r*F + f). Returns the spikes, sum of popcount(n). */
int64_t few_spike_binary(const float* x, const float* theta, int64_t F, int64_t r0, int64_t r1, int S, int G,
                         double* counts, int64_t N) {
    const float off = ldexpf(1.0f, -S), scale = ldexpf(1.0f, S - 1), top = (float)((1L << S) - 1);
    double gscale[4];  /* S <= 24: at most 3 groups of the code, later ones silent */
    for (int g = 0; g < G && g < 4; ++g) gscale[g] = ldexp(1.0, 1 - (8 * g + 8 < S ? 8 * g + 8 : S));
    int64_t total = 0;
    float sg[BLK], nf[BLK];
    uint32_t n[BLK];
    FOR_ROW_BLOCKS(F, r0, r1) {
        for (int64_t i = 0; i < len; ++i) {
            float u = x[i0 + i] / theta[f0 + i];
            float v = floorf((fabsf(u) + off) * scale);
            v = v > top ? top : v;
            v = v >= 0.0f ? v : 0.0f;  /* NaN: no spikes */
            nf[i] = v;
            sg[i] = u > 0.0f ? 1.0f : (u < 0.0f ? -1.0f : 0.0f);  /* torch.sign: +0 for -0 and NaN */
        }
        for (int64_t i = 0; i < len; ++i) n[i] = (uint32_t)(int32_t)nf[i];
        int64_t acc = 0;
        for (int64_t i = 0; i < len; ++i) acc += __builtin_popcount(n[i]);
        total += acc;
        for (int g = 0; g < G; ++g) {
            double* out = counts + (int64_t)g * N + i0;
            int start = 8 * g, stop = start + 8 < S ? start + 8 : S;
            if (start >= S) {
                for (int64_t i = 0; i < len; ++i) out[i] = 0.0;
            } else if (S <= 8) {  /* one group holds the whole code: its bits are n */
                for (int64_t i = 0; i < len; ++i) out[i] = (double)(sg[i] * nf[i]) * gscale[g];
            } else {
                int shift = S - stop;
                uint32_t mask = (1u << (stop - start)) - 1u;
                for (int64_t i = 0; i < len; ++i)
                    out[i] = (double)(sg[i] * (float)((n[i] >> shift) & mask)) * gscale[g];
            }
        }
    }
    return total;
}

/* Few-spike neurons, balanced ternary (few_spike.ternary_code), rows [r0, r1) of x [rows, F]: a code
   of S steps in a window of T steps read in groups of 8. m = fl32(fl32(x / theta) * 3^(S-1)); step k
   (k < S): s = sgn(m) [|m| >= W_k / 2], m -= s * W_k, W_k = 3^(S-1-k) (float32, in this order);
   group g's Horner count c = 3c + s over its steps, times 3^(stop - S) when the code ends inside it,
   at counts[g*N + i] (float64, N = rows*F). Returns the spikes, sum |s|. */
int64_t few_spike_ternary(const float* x, const float* theta, int64_t F, int64_t r0, int64_t r1, int T, int S,
                          double* counts, int64_t N) {
    float W[32], L[32];
    float p = 1.0f;
    for (int k = S - 1; k >= 0; --k) { W[k] = p; L[k] = p / 2.0f; p *= 3.0f; }
    const float scale = W[0];
    const int G = (T + 7) / 8;
    int64_t total = 0;
    float m[BLK], c[BLK], a[BLK];
    FOR_ROW_BLOCKS(F, r0, r1) {
        for (int64_t i = 0; i < len; ++i) {
            float u = x[i0 + i] / theta[f0 + i];
            m[i] = u * scale;
            a[i] = 0.0f;
        }
        for (int g = 0; g < G; ++g) {
            int start = 8 * g, stop = start + 8 < T ? start + 8 : T, end = stop < S ? stop : S;
            double tail = 1.0;
            for (int k = stop; k > end && end > start; --k) tail *= 3.0;
            for (int64_t i = 0; i < len; ++i) c[i] = 0.0f;
            for (int k = start; k < end; ++k) {
                const float w = W[k], l = L[k];
                for (int64_t i = 0; i < len; ++i) {
                    float v = m[i];
                    float s = fabsf(v) >= l ? (v > 0.0f ? 1.0f : -1.0f) : 0.0f;
                    m[i] = v - s * w;
                    c[i] = 3.0f * c[i] + s;
                    a[i] += fabsf(s);
                }
            }
            double* out = counts + (int64_t)g * N + i0;
            for (int64_t i = 0; i < len; ++i) out[i] = (double)c[i] * tail;
        }
        int64_t acc = 0;  /* a[i] holds an exact integer (at most 15) */
        for (int64_t i = 0; i < len; ++i) acc += (int64_t)a[i];
        total += acc;
    }
    return total;
}

/* NIR IF: v += r*I; s = v > th; v = s ? reset : v. cur[t*ctstride + i] (ctstride 0: constant).
   r, th, reset: per-neuron arrays of length n. spikes[t*tstride + i] = s (0/1). Returns the spike total. */
int64_t nir_if(const float* cur, int64_t ctstride, int64_t n, int T, const float* r, const float* th,
               const float* reset, int8_t* spikes, int64_t tstride) {
    int64_t total = 0;
    float v[BLK];
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        int64_t m = n - i0 < BLK ? n - i0 : BLK;
        int64_t cnt = 0;
        for (int64_t i = 0; i < m; ++i) v[i] = 0.0f;
        for (int t = 0; t < T; ++t) {
            const float* c = cur + (int64_t)t * ctstride + i0;
            int8_t* sp = spikes + (int64_t)t * tstride + i0;
            for (int64_t i = 0; i < m; ++i) {
                float ri = r[i0 + i] * c[i];
                float x = v[i] + ri;
                int s = x > th[i0 + i];
                v[i] = s ? reset[i0 + i] : x;
                sp[i] = (int8_t)s;
                cnt += s;
            }
        }
        total += cnt;
    }
    return total;
}

/* Event-driven y = s @ W.T + bias for rows [m0, m1) of the int8 spike matrix s [M, K], K <= 65536.
   wp: W packed in column tiles of TW outputs, wp[tile][k][c] = W[tile*TW + c][k] (zero padded),
   so that one event reads TW contiguous floats; a row's TW outputs accumulate in registers
   (events alternate between two sets of accumulators; a spike of 1 adds, any other value v
   adds v*w). */
#define TW 32

/* Lists row sr's events (input index, value); returns their number; *other |= a value != 1. */
static int64_t list_events(const int8_t* sr, int64_t K, uint16_t* idx, int8_t* val, int* other) {
    int64_t e = 0, k = 0;
    int o = 0;
#ifdef __AVX2__
    const __m256i zero = _mm256_setzero_si256();
    for (; k + 32 <= K; k += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(sr + k));
        uint32_t mask = ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero));
        while (mask) {
            int b = __builtin_ctz(mask);
            idx[e] = (uint16_t)(k + b); val[e] = sr[k + b]; o |= sr[k + b] != 1; ++e;
            mask &= mask - 1;
        }
    }
#endif
    for (; k < K; ++k) if (sr[k]) { idx[e] = (uint16_t)k; val[e] = sr[k]; o |= sr[k] != 1; ++e; }
    *other |= o;
    return e;
}

/* counts[m] = number of non-zeros in row m of s [M, K], rows [m0, m1). */
void count_events(const int8_t* s, int64_t K, int64_t m0, int64_t m1, int64_t* counts) {
    for (int64_t m = m0; m < m1; ++m) {
        const int8_t* sr = s + m * K;
        int64_t c = 0, k = 0;
#ifdef __AVX2__
        const __m256i zero = _mm256_setzero_si256();
        for (; k + 32 <= K; k += 32) {
            __m256i v = _mm256_loadu_si256((const __m256i*)(sr + k));
            c += 32 - __builtin_popcount((uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero)));
        }
#endif
        for (; k < K; ++k) c += sr[k] != 0;
        counts[m] = c;
    }
}

/* out[0..width) = bias + (or, with accumulate, out +=) the sum of W-tile rows over n events. */
static void row_tile(float* out, int64_t width, const float* bias, const float* wt, const uint16_t* idx,
                     const int8_t* val, int64_t n, int binary, int accumulate) {
#if defined(__AVX2__)
#define NV (TW / 8)
    __m256 a[NV], b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) { a[v] = _mm256_setzero_ps(); b[v] = a[v]; }
    int64_t q = 0;
    if (binary) {
        for (; q + 1 < n; q += 2) {
            const float* w = wt + (int64_t)idx[q] * TW;
            const float* x = wt + (int64_t)idx[q + 1] * TW;
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                a[v] = _mm256_add_ps(a[v], _mm256_loadu_ps(w + 8 * v));
                b[v] = _mm256_add_ps(b[v], _mm256_loadu_ps(x + 8 * v));
            }
        }
    } else {
        for (; q + 1 < n; q += 2) {
            const float* w = wt + (int64_t)idx[q] * TW;
            const float* x = wt + (int64_t)idx[q + 1] * TW;
            __m256 f = _mm256_set1_ps((float)val[q]), g = _mm256_set1_ps((float)val[q + 1]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(f, _mm256_loadu_ps(w + 8 * v)));
                b[v] = _mm256_add_ps(b[v], _mm256_mul_ps(g, _mm256_loadu_ps(x + 8 * v)));
            }
        }
    }
    if (q < n) {
        const float* w = wt + (int64_t)idx[q] * TW;
        __m256 f = _mm256_set1_ps((float)val[q]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(f, _mm256_loadu_ps(w + 8 * v)));
    }
    float acc[TW];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(acc + 8 * v, _mm256_add_ps(a[v], b[v]));
#undef NV
#else
    float acc[TW];
    (void)binary;
    for (int c = 0; c < TW; ++c) acc[c] = 0.0f;
    for (int64_t q = 0; q < n; ++q) {
        const float* w = wt + (int64_t)idx[q] * TW;
        float f = (float)val[q];
        for (int c = 0; c < TW; ++c) acc[c] += f * w[c];
    }
#endif
    if (accumulate) for (int64_t c = 0; c < width; ++c) out[c] += acc[c];
    else if (bias) for (int64_t c = 0; c < width; ++c) out[c] = bias[c] + acc[c];
    else for (int64_t c = 0; c < width; ++c) out[c] = acc[c];
}

/* Rows [m0, m1): list the events of each row at idx/val + start[m] (start: [M+1] offsets of
   the non-zeros, computed by the caller), then apply each column tile of W to every row of the
   range, so that a tile is loaded into cache once per thread, not once per row. Inputs go in
   chunks of kc (a kc x TW block of W stays in L2 even when both cores share one); cuts[m*C + c]
   (scratch, C = ceil(K/kc) + 1 per row) marks where row m's events of chunk c begin. */
void event_matmul(const int8_t* s, int64_t K, const float* wp, int64_t N, const float* bias, float* y,
                  int64_t m0, int64_t m1, const int64_t* start, uint16_t* idx, int8_t* val, int64_t kc,
                  int64_t* cuts) {
    int64_t tiles = (N + TW - 1) / TW;
    int64_t chunks = (K + kc - 1) / kc, C = chunks + 1;
    int other = 0;
    for (int64_t m = m0; m < m1; ++m) {
        int64_t e0 = start[m];
        int64_t n = list_events(s + m * K, K, idx + e0, val + e0, &other);
        int64_t* cut = cuts + (m - m0) * C;
        int64_t q = 0;
        for (int64_t c = 0; c < chunks; ++c) {
            cut[c] = e0 + q;
            while (q < n && idx[e0 + q] < (c + 1) * kc) ++q;
        }
        cut[chunks] = e0 + n;
    }
    for (int64_t tile = 0; tile < tiles; ++tile) {
        const float* wt = wp + tile * K * TW;
        int64_t j0 = tile * TW;
        int64_t width = N - j0 < TW ? N - j0 : TW;
        for (int64_t c = 0; c < chunks; ++c)
            for (int64_t m = m0; m < m1; ++m) {
                const int64_t* cut = cuts + (m - m0) * C;
                row_tile(y + m * N + j0, width, bias ? bias + j0 : 0, wt, idx + cut[c], val + cut[c],
                         cut[c + 1] - cut[c], !other, c > 0);
            }
    }
}

/* out[i] = (int8)x[i] when every x[i] is an integer in [-127, 127]; returns the number of
   non-zeros, or -1 (stopping early) at the first value that is not such an integer. */
int64_t to_spikes(const float* x, int64_t n, int8_t* out) {
    int64_t nnz = 0;
    for (int64_t i0 = 0; i0 < n; i0 += BLK) {
        int64_t m = n - i0 < BLK ? n - i0 : BLK;
        int bad = 0;
        for (int64_t i = 0; i < m; ++i) {
            float v = x[i0 + i];
            bad |= !(v == floorf(v) && v >= -127.0f && v <= 127.0f);
            out[i0 + i] = (int8_t)(bad ? 0 : v);
            nnz += v != 0.0f;
        }
        if (bad) return -1;
    }
    return nnz;
}
"""
