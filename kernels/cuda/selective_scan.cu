// Selective scan (lrnnx spec §4.1; real or complex A), forward and backward, fp32 state.
//
// Layout (row-major):  u, delta, deltaA, z, y, du, ddelta, ddeltaA, dz : (Bsz, L, E)
//                      A : (E, N)   D, delta_bias : (E)
//                      B, C : (Bsz, L, G, N) time-varying (channel e uses group e / (E/G))
//                             or (E, N) time-invariant (BC_FIXED)
//
//   Δ_t  = delta_t + delta_bias (if HAS_DB);  Δ_t = softplus(Δ_t) (if SOFTPLUS, threshold 20)
//   ΔA_t = deltaA_t (raw, if HAS_DTA) else Δ_t
//   h_t[n] = Ā(ΔA_t·A[n]) h_{t-1}[n] + γ̄(Δ_t, A[n]) B_t[n] u_t          (h_{-1} = 0)
//   y_t  = (Σ_n C_t[n] h_t[n] + D u_t) · SiLU(z_t) (z if HAS_Z, D if HAS_D)
//
// Rules (RULE): 0 mamba Ā = e^x, γ̄ = Δ;  1 zoh Ā = e^x, γ̄ = expm1(ΔA)/A;
//               2 bilinear Ā = (1 + x/2)/(1 − x/2) (x clamped to ±2e18), γ̄ = Δ/(1 − ΔA/2);
//               3 dirac Ā = e^x, γ̄ = 1.            (x = ΔA_t·A[n]; γ̄ uses Δ_t·A[n])
//               4 rglru Ā = A^ΔA (A the base), γ̄ = sqrt(1 − Ā²);  5 s7 Ā = 1 − 1/(ΔA² + ½), γ̄ = 1.
//
// COMPLEX (complex A, time-varying B/C only): A, B_t, C_t, h and the state buffers hold (re, im)
// pairs interleaved (NS = 2N floats per state vector), y_t = 2·Re(Σ_n C_t[n] h_t[n]) + D u_t, and
// the backward carries the adjoint λ_t = 2·G_t·conj(C_t) + conj(Ā_{t+1})·λ_{t+1} (gradients as
// ∂L/∂Re + i·∂L/∂Im).
//
// Parallel structure (chunked scan). A block owns CB = CS·KCH consecutive channels of one batch
// row and walks the sequence in chunks of TCH = SEG·ITEMS steps (forward: in order; backward:
// in reverse). A chunk's inputs are staged in shared memory with coalesced loads (rows of CB
// channels), B_t/C_t once per block. Thread = (channel set, segment s): it owns KCH channels and
// the ITEMS consecutive steps s·ITEMS.. of the chunk; the SEG threads of a channel set are SEG
// consecutive lanes. For each state n in turn, every thread composes its ITEMS steps into one
// affine map h ↦ P·h + S, the SEG lanes scan these maps with shuffles (log2 SEG levels), the
// chunk's carried state (shared memory) enters, and each thread re-walks its steps from its start
// state, accumulating y. The backward does the same for the state and then the reverse scan of the
// adjoint m_t = Ā_t·(G_t·C_t + m_{t+1}) (λ_t = G_t C_t + m_{t+1}, G = ∂L/∂y_pre), with Ā, γ̄ of
// the state in registers, so each (step, state) computes Ā once in the forward and once in the
// backward. The forward stores the state at every chunk start (hs: (Bsz, ⌈L/TCH⌉, NS, E)) for the
// backward.
//
// Determinism: every reduction runs in a fixed order: the item order inside a thread, xor
// butterflies over the SEG lanes of a channel, the channel sets of a block summed in set order in
// shared memory (time-varying dB/dC), block partials summed in block order by ss_reduce_bc, per
// channel sums over batch in batch order by ss_reduce_e. No atomics.
//
// Compile-time parameters (defines): NSTATE, SEG, KCH, ITEMS, NWARP, RULE, HAS_Z, HAS_D, HAS_DB,
// SOFTPLUS, HAS_DTA, BC_FIXED, COMPLEX. SEQ=1 replaces the chunked ss_fwd / ss_bwd by the
// sequential-mode kernels of selective_seq.cu (appended to this source; see there). With time-varying B/C, CB divides the channels of a group (a block
// lies inside one group); with BC_FIXED the last block may hold channels ≥ E (inactive).

#ifndef NSTATE
#define NSTATE 16
#endif
#ifndef SEG
#define SEG 16
#endif
#ifndef KCH
#define KCH 2
#endif
#ifndef ITEMS
#define ITEMS 4
#endif
#ifndef NWARP
#define NWARP 4
#endif
#ifndef RULE
#define RULE 0
#endif
#ifndef HAS_Z
#define HAS_Z 0
#endif
#ifndef HAS_D
#define HAS_D 0
#endif
#ifndef HAS_DB
#define HAS_DB 0
#endif
#ifndef SOFTPLUS
#define SOFTPLUS 0
#endif
#ifndef HAS_DTA
#define HAS_DTA 0
#endif
#ifndef BC_FIXED
#define BC_FIXED 0
#endif
#ifndef COMPLEX
#define COMPLEX 0
#endif
#ifndef SEQ
#define SEQ 0
#endif
#if COMPLEX && BC_FIXED
#error "complex A with time-invariant B/C is not supported"
#endif

#define CPW (32 / SEG)      // channel sets per warp
#define CS (CPW * NWARP)    // channel sets per block
#define CB (CS * KCH)       // channels per block
#define NT (32 * NWARP)     // threads per block
#define TCH (SEG * ITEMS)   // steps per chunk
#define TS (TCH + 4)        // shared row stride (floats; keeps float4 alignment)
#define FULL 0xffffffffu
#define NV (COMPLEX ? 2 : 1)  // floats per state value (re, im for complex A)
#define NS (NSTATE * NV)      // floats per state vector

#define R_MAMBA 0
#define R_ZOH 1
#define R_BILINEAR 2
#define R_DIRAC 3
#define R_RGLRU 4  // Ā = A^ΔA = e^{ΔA·ln A} (A the base in (0,1)), γ̄ = sqrt(1 − Ā²)
#define R_S7 5     // Ā = 1 − 1/(ΔA² + 1/2) (A ignored), γ̄ = 1
// rules whose Ā = 2^{x·al}: the product of a thread's Ā is one ex2
#define EXP_RULE (RULE == R_MAMBA || RULE == R_ZOH || RULE == R_DIRAC || RULE == R_RGLRU)
#if COMPLEX && (RULE == R_RGLRU || RULE == R_S7)
#error "the rglru and s7 rules are real"
#endif
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// 1/x to about 1 ulp (rcp.approx; x here in [1, 3])
__device__ __forceinline__ float rcp_approx(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
// log(1 + w) for w in [0, 1] in 17 FP32 instructions and one rcp (log1pf: about 35):
// log(1 + w) = 2·atanh(s) = 2·(s + s³/3 + s⁵/5 + … + s¹⁵/15), s = w/(2 + w) in [0, 1/3] (rcp.approx
// and one Newton step on the exact denominator d + dl, dl the rounding error of d = 2 + w, so s
// is not off by d's rounding); the first term left out, s¹⁷/17, is below 2⁻²⁹ of the sum.
// Emulated in f32 (rcp one ulp off) against f64: log1p_unit within 1.1 ulp over [0, 1];
// softplus_sig within 3.0 ulp over 4M points of [−100, 20] (log1pf(expf(x)): 3.0; 3.8 without
// dl) and σ within 4.8 ulp (expf(x)/(1 + expf(x)): 3.4), most of it expf's rounding.
__device__ __forceinline__ float log1p_unit(float w) {
    const float d = 2.f + w, r = rcp_approx(d);
    const float dl = (2.f - d) + w;  // exact (|w| ≤ 2): 2 + w = d + dl
    float s = w * r;
    s = fmaf(fmaf(-dl, s, fmaf(-d, s, w)), r, s);
    const float q = s * s;
    float P = 1.f / 15.f;
    P = fmaf(P, q, 1.f / 13.f);
    P = fmaf(P, q, 1.f / 11.f);
    P = fmaf(P, q, 1.f / 9.f);
    P = fmaf(P, q, 1.f / 7.f);
    P = fmaf(P, q, 1.f / 5.f);
    P = fmaf(P, q, 1.f / 3.f);
    const float s2 = s + s;
    return fmaf(s2 * q, P, s2);
}
// softplus(x) = log(1 + e^x) = max(x, 0) + log(1 + e^{−|x|}); with sg non-null, *sg = σ(x) =
// 1/(1 + e^{−|x|}) for x > 0, e^{−|x|}/(1 + e^{−|x|}) otherwise. Branch-free: above
// SOFTPLUS_CUT (torch's threshold 20, where torch returns x) e^{−x} < 2.1e-9 is below half an
// ulp of x (≥ 9.5e-7), so the sum comes out as x exactly; σ is taken as 1 there.
// NaN stays NaN, −∞ gives 0, +∞ gives +∞.
#define SOFTPLUS_CUT 20.f
__device__ __forceinline__ float softplus_sig(float x, float* sg) {
    const float w = expf(-fabsf(x));
    if (sg) {
        const float r = rcp_approx(1.f + w);
        *sg = x > SOFTPLUS_CUT ? 1.f : x > 0.f ? r : w * r;
    }
    return fmaxf(x, 0.f) + log1p_unit(w);
}
__device__ __forceinline__ float softplus_f(float x) { return softplus_sig(x, nullptr); }

// log2 of the exponent's base: Ā = 2^{x·al}
__device__ __forceinline__ float alog2(float a) {
#if RULE == R_RGLRU
    return log2f(a);
#else
    return a * LOG2E;
#endif
}
// Ā of x = ΔA (and a = A[n]); al = alog2(a)
__device__ __forceinline__ float abar(float da, float a, float al) {
#if RULE == R_BILINEAR
    (void)al;
    float v = fminf(fmaxf(da * a, -2e18f), 2e18f);
    return (1.f + 0.5f * v) / (1.f - 0.5f * v);
#elif RULE == R_S7
    (void)a; (void)al;
    return 1.f - 1.f / fmaf(da, da, 0.5f);
#else
    (void)a;
    return ex2(da * al);
#endif
}
// Ā of step t0 + i (valid: inside the sequence); a padded step past L is the identity (Ā = 1)
// whatever the rule (S7's Ā(0) is −1, RG-LRU's 0·log2(0) NaN), so the carried state stays exact.
__device__ __forceinline__ float abar_at(float da, float a, float al, bool valid) {
    return valid ? abar(da, a, al) : 1.f;
}
// Π Ā over a segment of an exp rule, e^{sx·a} = 2^{sx·al}: 1 for an empty sum (all steps padded
// or Δ = 0), where sx·al would be 0·(−∞) for RG-LRU's a = 0.
__device__ __forceinline__ float abar_prod(float sx, float al) {
    return sx == 0.f ? 1.f : ex2(sx * al);
}
// dĀ/dx given Ā and x
__device__ __forceinline__ float dabar(float ab, float x) {
#if RULE == R_BILINEAR
    (void)ab;
    if (x < -2e18f || x > 2e18f) return 0.f;
    float den = 1.f - 0.5f * x;
    return 1.f / (den * den);
#else
    (void)x;
    return ab;
#endif
}
// γ̄(Δ, a)
__device__ __forceinline__ float gbar(float d, float a) {
#if RULE == R_MAMBA
    (void)a;
    return d;
#elif RULE == R_ZOH
    return a == 0.f ? d : expm1f(d * a) / a;
#elif RULE == R_BILINEAR
    return d / (1.f - 0.5f * d * a);
#else
    (void)d; (void)a;
    return 1.f;
#endif
}

// ITEMS consecutive floats of a shared row (16-byte aligned when ITEMS % 4 == 0)
__device__ __forceinline__ void ld_items(const float* p, float* out) {
#if ITEMS % 4 == 0
#pragma unroll
    for (int i = 0; i < ITEMS; i += 4) {
        float4 v = *reinterpret_cast<const float4*>(p + i);
        out[i] = v.x; out[i + 1] = v.y; out[i + 2] = v.z; out[i + 3] = v.w;
    }
#else
#pragma unroll
    for (int i = 0; i < ITEMS; i++) out[i] = p[i];
#endif
}
__device__ __forceinline__ void st_items(float* p, const float* v) {
#if ITEMS % 4 == 0
#pragma unroll
    for (int i = 0; i < ITEMS; i += 4)
        *reinterpret_cast<float4*>(p + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
#else
#pragma unroll
    for (int i = 0; i < ITEMS; i++) p[i] = v[i];
#endif
}

// Asynchronous 4-byte copy global -> shared (zero-filled when !valid); all of a chunk's copies
// are in flight together, then cp_wait() + __syncthreads().
__device__ __forceinline__ void cp4(float* dst, const float* src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    const int sz = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(sz)
                 : "memory");
}
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

// Stage a (Bsz, L, E) tile (steps t0.., channels e0..e0+CB-1) into s[c][t] (zeros outside).
// When NT is a multiple of CB every thread keeps one channel and strides over the steps.
__device__ __forceinline__ void stage_ble(const float* __restrict__ X, float* s, int b, int t0,
                                          int e0, int L, int E) {
#if NT % CB == 0
    const int c = threadIdx.x % CB, t = threadIdx.x / CB, e = e0 + c;
    const float* p = X + ((size_t)b * L + t0 + t) * E + e;
    const int step = (NT / CB) * E;
    const int nv = e < E ? L - t0 - t : 0;  // valid rows of this thread: r·(NT/CB) < nv
#pragma unroll
    for (int r = 0; r < TCH * CB / NT; r++) {
        const bool ok = r * (NT / CB) < nv;
        cp4(s + c * TS + t + r * (NT / CB), ok ? p : X, ok);
        p += step;
    }
#else
    for (int j = threadIdx.x; j < TCH * CB; j += NT) {
        const int t = j / CB, c = j % CB;
        const int tt = t0 + t, e = e0 + c;
        const bool ok = tt < L && e < E;
        cp4(s + c * TS + t, ok ? X + ((size_t)b * L + tt) * E + e : X, ok);
    }
#endif
}
// Store s[c][t] into a (Bsz, L, E) tensor (valid steps and channels only).
__device__ __forceinline__ void unstage_ble(float* __restrict__ X, const float* s, int b, int t0,
                                            int e0, int L, int E) {
#if NT % CB == 0
    const int c = threadIdx.x % CB, t = threadIdx.x / CB, e = e0 + c;
    float* p = X + ((size_t)b * L + t0 + t) * E + e;
    const int step = (NT / CB) * E;
    const int nv = e < E ? L - t0 - t : 0;
#pragma unroll
    for (int r = 0; r < TCH * CB / NT; r++) {
        if (r * (NT / CB) < nv) *p = s[c * TS + t + r * (NT / CB)];
        p += step;
    }
#else
    for (int j = threadIdx.x; j < TCH * CB; j += NT) {
        const int t = j / CB, c = j % CB;
        const int tt = t0 + t, e = e0 + c;
        if (tt < L && e < E) X[((size_t)b * L + tt) * E + e] = s[c * TS + t];
    }
#endif
}
// Stage B_t or C_t of group g for the chunk into s[n][t].
__device__ __forceinline__ void stage_bc(const float* __restrict__ M, float* s, int b, int t0,
                                         int L, int G, int g) {
    const float* base = M + ((size_t)b * L * G + g) * NS;
#if NT % NS == 0 && (TCH * NS) % NT == 0
    // every thread keeps one state and strides over the steps
    const int n = threadIdx.x % NS, t = threadIdx.x / NS;
    const float* p = base + (size_t)(t0 + t) * G * NS + n;
    const int step = (NT / NS) * G * NS;
#pragma unroll
    for (int r = 0; r < TCH * NS / NT; r++) {
        const bool ok = t0 + t + r * (NT / NS) < L;
        cp4(s + n * TS + t + r * (NT / NS), ok ? p : M, ok);
        p += step;
    }
#else
    for (int j = threadIdx.x; j < TCH * NS; j += NT) {
        const int t = j / NS, n = j % NS;
        const int tt = t0 + t;
        cp4(s + n * TS + t, tt < L ? base + ((size_t)tt * G) * NS + n : M, tt < L);
    }
#endif
}
// Stage per-channel (E, N) rows of the block's channels into s[c][n] (zeros past E).
__device__ __forceinline__ void stage_en(const float* __restrict__ M, float* s, int e0, int E) {
    for (int j = threadIdx.x; j < CB * NS; j += NT) {
        const bool ok = e0 * NS + j < E * NS;
        cp4(s + j, ok ? M + (size_t)e0 * NS + j : M, ok);
    }
}

// Inclusive scan over the SEG lanes of a channel set of the affine maps h ↦ P·h + S (lane order
// = time order), then the exclusive map of each lane (identity for the first lane).
template <int K>
__device__ __forceinline__ void scan_up(int s, float (&P)[K], float (&S)[K], float (&Pe)[K],
                                        float (&Se)[K]) {
#pragma unroll
    for (int o = 1; o < SEG; o <<= 1) {
#pragma unroll
        for (int k = 0; k < K; k++) {
            const float pp = __shfl_up_sync(FULL, P[k], o, SEG);
            const float sp = __shfl_up_sync(FULL, S[k], o, SEG);
            if (s >= o) { S[k] = fmaf(P[k], sp, S[k]); P[k] *= pp; }
        }
    }
#pragma unroll
    for (int k = 0; k < K; k++) {
        Pe[k] = __shfl_up_sync(FULL, P[k], 1, SEG);
        Se[k] = __shfl_up_sync(FULL, S[k], 1, SEG);
        if (s == 0) { Pe[k] = 1.f; Se[k] = 0.f; }
    }
}
// The same from the right (maps m ↦ Q·m + R applied from later to earlier lanes).
template <int K>
__device__ __forceinline__ void scan_down(int s, float (&Q)[K], float (&R)[K], float (&Qe)[K],
                                          float (&Re)[K]) {
#pragma unroll
    for (int o = 1; o < SEG; o <<= 1) {
#pragma unroll
        for (int k = 0; k < K; k++) {
            const float qr = __shfl_down_sync(FULL, Q[k], o, SEG);
            const float rr = __shfl_down_sync(FULL, R[k], o, SEG);
            if (s + o < SEG) { R[k] = fmaf(Q[k], rr, R[k]); Q[k] *= qr; }
        }
    }
#pragma unroll
    for (int k = 0; k < K; k++) {
        Qe[k] = __shfl_down_sync(FULL, Q[k], 1, SEG);
        Re[k] = __shfl_down_sync(FULL, R[k], 1, SEG);
        if (s == SEG - 1) { Qe[k] = 1.f; Re[k] = 0.f; }
    }
}
// Sum over the SEG lanes of a channel set (xor butterfly: every lane gets the same bits).
__device__ __forceinline__ float sum_seg(float v) {
#pragma unroll
    for (int o = SEG / 2; o >= 1; o >>= 1) v += __shfl_xor_sync(FULL, v, o, SEG);
    return v;
}

// ---- complex arithmetic (complex A) ----
struct cf {
    float r, i;
};
__device__ __forceinline__ cf cadd(cf a, cf b) { return {a.r + b.r, a.i + b.i}; }
__device__ __forceinline__ cf cmul(cf a, cf b) { return {a.r * b.r - a.i * b.i, a.r * b.i + a.i * b.r}; }
__device__ __forceinline__ cf cfma(cf a, cf b, cf c) {
    return {fmaf(a.r, b.r, fmaf(-a.i, b.i, c.r)), fmaf(a.r, b.i, fmaf(a.i, b.r, c.i))};
}
__device__ __forceinline__ cf cscale(cf a, float s) { return {a.r * s, a.i * s}; }
__device__ __forceinline__ cf cconj(cf a) { return {a.r, -a.i}; }
__device__ __forceinline__ cf cdiv(cf a, cf b) {
    const float d = b.r * b.r + b.i * b.i;
    return {(a.r * b.r + a.i * b.i) / d, (a.i * b.r - a.r * b.i) / d};
}
__device__ __forceinline__ cf cexp(cf z) {
    float sn, cs;
    sincosf(z.i, &sn, &cs);
    const float m = expf(z.r);
    return {m * cs, m * sn};
}
// e^z − 1 without cancellation for small |z|
__device__ __forceinline__ cf cexpm1(cf z) {
    float sn, cs;
    sincosf(z.i, &sn, &cs);
    const float sh = sinf(0.5f * z.i);
    return {fmaf(expm1f(z.r), cs, -2.f * sh * sh), expf(z.r) * sn};
}
// Ā(x·a) of the rule
__device__ __forceinline__ cf cabar(float x, cf a) {
    const cf v = cscale(a, x);
#if RULE == R_BILINEAR
    return cdiv(cf{1.f + 0.5f * v.r, 0.5f * v.i}, cf{1.f - 0.5f * v.r, -0.5f * v.i});
#else
    return cexp(v);
#endif
}
// dĀ/dx·(1/a) factor: exp rules Ā; bilinear 1/(1 − v/2)²
__device__ __forceinline__ cf cdabar(cf ab, float x, cf a) {
#if RULE == R_BILINEAR
    (void)ab;
    const cf den = {1.f - 0.5f * x * a.r, -0.5f * x * a.i};
    return cdiv(cf{1.f, 0.f}, cmul(den, den));
#else
    (void)x; (void)a;
    return ab;
#endif
}
// γ̄(Δ, a)
__device__ __forceinline__ cf cgbar(float d, cf a) {
#if RULE == R_MAMBA
    (void)a;
    return {d, 0.f};
#elif RULE == R_ZOH
    if (a.r == 0.f && a.i == 0.f) return {d, 0.f};
    return cdiv(cexpm1(cscale(a, d)), a);
#elif RULE == R_BILINEAR
    return cdiv(cf{d, 0.f}, cf{1.f - 0.5f * d * a.r, -0.5f * d * a.i});
#else
    (void)d; (void)a;
    return {1.f, 0.f};
#endif
}
// (∂γ̄/∂Δ, ∂γ̄/∂a) from γ̄ = gb (zoh, bilinear)
__device__ __forceinline__ void cgbar_partials(float d, cf a, cf gb, cf& gd, cf& ga) {
#if RULE == R_ZOH
    // e^{Δa} itself: 1 + a·γ̄ cancels to rounding noise where e^{Δa} is tiny (Δ·Re a ≪ 0)
    gd = cexp(cscale(a, d));
    if (a.r == 0.f && a.i == 0.f) ga = {0.5f * d * d, 0.f};
    else ga = cdiv(cadd(cscale(gd, d), cscale(gb, -1.f)), a);
#elif RULE == R_BILINEAR
    (void)gb;
    const cf den = {1.f - 0.5f * d * a.r, -0.5f * d * a.i};
    gd = cdiv(cf{1.f, 0.f}, cmul(den, den));
    ga = cscale(gd, 0.5f * d * d);
#else
    (void)d; (void)a; (void)gb;
    gd = {0.f, 0.f}; ga = {0.f, 0.f};
#endif
}
// scans of complex affine maps (see scan_up / scan_down)
template <int K>
__device__ __forceinline__ void cscan_up(int s, cf (&P)[K], cf (&S)[K], cf (&Pe)[K], cf (&Se)[K]) {
#pragma unroll
    for (int o = 1; o < SEG; o <<= 1) {
#pragma unroll
        for (int k = 0; k < K; k++) {
            const cf pp = {__shfl_up_sync(FULL, P[k].r, o, SEG), __shfl_up_sync(FULL, P[k].i, o, SEG)};
            const cf sp = {__shfl_up_sync(FULL, S[k].r, o, SEG), __shfl_up_sync(FULL, S[k].i, o, SEG)};
            if (s >= o) { S[k] = cfma(P[k], sp, S[k]); P[k] = cmul(P[k], pp); }
        }
    }
#pragma unroll
    for (int k = 0; k < K; k++) {
        Pe[k] = {__shfl_up_sync(FULL, P[k].r, 1, SEG), __shfl_up_sync(FULL, P[k].i, 1, SEG)};
        Se[k] = {__shfl_up_sync(FULL, S[k].r, 1, SEG), __shfl_up_sync(FULL, S[k].i, 1, SEG)};
        if (s == 0) { Pe[k] = {1.f, 0.f}; Se[k] = {0.f, 0.f}; }
    }
}
template <int K>
__device__ __forceinline__ void cscan_down(int s, cf (&Q)[K], cf (&R)[K], cf (&Qe)[K], cf (&Re)[K]) {
#pragma unroll
    for (int o = 1; o < SEG; o <<= 1) {
#pragma unroll
        for (int k = 0; k < K; k++) {
            const cf qr = {__shfl_down_sync(FULL, Q[k].r, o, SEG), __shfl_down_sync(FULL, Q[k].i, o, SEG)};
            const cf rr = {__shfl_down_sync(FULL, R[k].r, o, SEG), __shfl_down_sync(FULL, R[k].i, o, SEG)};
            if (s + o < SEG) { R[k] = cfma(Q[k], rr, R[k]); Q[k] = cmul(Q[k], qr); }
        }
    }
#pragma unroll
    for (int k = 0; k < K; k++) {
        Qe[k] = {__shfl_down_sync(FULL, Q[k].r, 1, SEG), __shfl_down_sync(FULL, Q[k].i, 1, SEG)};
        Re[k] = {__shfl_down_sync(FULL, R[k].r, 1, SEG), __shfl_down_sync(FULL, R[k].i, 1, SEG)};
        if (s == SEG - 1) { Qe[k] = {1.f, 0.f}; Re[k] = {0.f, 0.f}; }
    }
}

// Per-item time steps from staged raw delta (and deltaA): Δ (zero past L: identity step).
__device__ __forceinline__ float delta_of(float raw, float db, bool valid) {
    float d = raw;
#if HAS_DB
    d += db;
#else
    (void)db;
#endif
#if SOFTPLUS
    d = softplus_f(d);
#endif
    return valid ? d : 0.f;
}

// (∂γ̄/∂Δ, ∂γ̄/∂a) from γ̄ = gb (zoh, bilinear)
__device__ __forceinline__ void gbar_partials(float d, float a, float gb, float& gd, float& ga) {
#if RULE == R_ZOH
    // e^{Δa} itself: 1 + a·γ̄ cancels to rounding noise where e^{Δa} is tiny (Δ·a ≪ 0)
    gd = expf(d * a);
    ga = a == 0.f ? 0.5f * d * d : (d * gd - gb) / a;
#elif RULE == R_BILINEAR
    (void)gb;
    const float den = 1.f - 0.5f * d * a;
    gd = 1.f / (den * den);
    ga = 0.5f * d * d * gd;
#else
    (void)d; (void)a; (void)gb;
    gd = 0.f; ga = 0.f;
#endif
}

#if !SEQ  // the chunked kernels (SEQ=1: selective_seq.cu, appended, defines ss_fwd / ss_bwd)
// ---------------------------------------------------------------------------------------------
// Forward.  grid (⌈E / CB⌉, Bsz), block (NT), dynamic shared memory fwd_shared_bytes.
extern "C" __global__ void __launch_bounds__(NT)
ss_fwd(const float* __restrict__ u, const float* __restrict__ dt, const float* __restrict__ dta,
       const float* __restrict__ A, const float* __restrict__ Bm, const float* __restrict__ Cm,
       const float* __restrict__ Dv, const float* __restrict__ z, const float* __restrict__ dbias,
       float* __restrict__ y, float* __restrict__ hs, float* __restrict__ last, int L, int E,
       int G) {
    extern __shared__ float4 smem4[];
    float* nx = reinterpret_cast<float*>(smem4);
    float* sU = nx; nx += CB * TS;        // [CB][TS]  u, then y before the gate
    float* sD = nx; nx += CB * TS;        // [CB][TS]  raw delta
#if HAS_DTA
    float* sDA = nx; nx += CB * TS;       // [CB][TS]  deltaA
#endif
#if HAS_Z
    float* sZ = nx; nx += CB * TS;        // [CB][TS]  z
#endif
#if !BC_FIXED
    float* sB = nx; nx += NS * TS;    // [N][TS]
    float* sC = nx; nx += NS * TS;
#endif
    float* sA = nx; nx += CB * NS;    // [CB][N]
    float* sH = nx; nx += CB * NS;    // [CB][N] state carried between chunks
#if BC_FIXED
    float* sBf = nx; nx += CB * NS;
    float* sCf = nx; nx += CB * NS;
#endif
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int set = warp * CPW + lane / SEG, s = lane % SEG;
    const int b = blockIdx.y, e0 = blockIdx.x * CB;
    const int g = BC_FIXED ? 0 : e0 / (E / G);
    (void)g;
    const int nck = (L + TCH - 1) / TCH;
    for (int j = tid; j < CB * NS; j += NT) sH[j] = 0.f;
    stage_en(A, sA, e0, E);
#if BC_FIXED
    stage_en(Bm, sBf, e0, E);
    stage_en(Cm, sCf, e0, E);
#endif

    float Dd[KCH], db[KCH];
#pragma unroll
    for (int k = 0; k < KCH; k++) {
        const int e = min(e0 + set * KCH + k, E - 1);
        Dd[k] = HAS_D ? Dv[e] : 0.f;
        db[k] = HAS_DB ? dbias[e] : 0.f;
    }
    (void)Dd;

    for (int ck = 0; ck < nck; ck++) {
        const int t0 = ck * TCH;
        __syncthreads();
        stage_ble(u, sU, b, t0, e0, L, E);
        stage_ble(dt, sD, b, t0, e0, L, E);
#if HAS_DTA
        stage_ble(dta, sDA, b, t0, e0, L, E);
#endif
#if HAS_Z
        stage_ble(z, sZ, b, t0, e0, L, E);
#endif
#if !BC_FIXED
        stage_bc(Bm, sB, b, t0, L, G, g);
        stage_bc(Cm, sC, b, t0, L, G, g);
#endif
        // the state at the chunk start, for the backward (coalesced along channels)
        for (int j = tid; j < CB * NS; j += NT) {
            const int n = j / CB, c = j % CB;
            if (e0 + c < E) hs[(((size_t)b * nck + ck) * NS + n) * E + e0 + c] = sH[c * NS + n];
        }
        cp_wait();
        __syncthreads();
        const int tl = s * ITEMS;  // first step of this thread in the chunk
        float uu[KCH][ITEMS], dd[KCH][ITEMS], yy[KCH][ITEMS], sx[KCH];
#if HAS_DTA
        float da[KCH][ITEMS];
#endif
#pragma unroll
        for (int k = 0; k < KCH; k++) {
            const int c = set * KCH + k;
            ld_items(sU + c * TS + tl, uu[k]);
            ld_items(sD + c * TS + tl, dd[k]);
#if HAS_DTA
            ld_items(sDA + c * TS + tl, da[k]);
#endif
            sx[k] = 0.f;
#pragma unroll
            for (int i = 0; i < ITEMS; i++) {
                const bool valid = t0 + tl + i < L;
                dd[k][i] = delta_of(dd[k][i], db[k], valid);
#if HAS_DTA
                if (!valid) da[k][i] = 0.f;
                sx[k] += da[k][i];
#else
                sx[k] += dd[k][i];
#endif
                yy[k][i] = 0.f;
            }
        }
#if !COMPLEX
#pragma unroll 2  // two states in flight (ILP)
        for (int n = 0; n < NSTATE; n++) {
            float Bv[ITEMS], Cv[ITEMS];
#if !BC_FIXED
            ld_items(sB + n * TS + tl, Bv);
            ld_items(sC + n * TS + tl, Cv);
#endif
            float ab[KCH][ITEMS], bu[KCH][ITEMS], P[KCH], S[KCH], Pe[KCH], Se[KCH], hc[KCH];
#pragma unroll
            for (int k = 0; k < KCH; k++) {
                const int c = set * KCH + k;
                const float a = sA[c * NSTATE + n], al = alog2(a);
#if BC_FIXED
#pragma unroll
                for (int i = 0; i < ITEMS; i++) Bv[i] = sBf[c * NSTATE + n];
#endif
                S[k] = 0.f;
                P[k] = 1.f;
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
#if HAS_DTA
                    const float x = da[k][i];
#else
                    const float x = dd[k][i];
#endif
                    ab[k][i] = abar_at(x, a, al, t0 + tl + i < L);
#if RULE == R_MAMBA
                    bu[k][i] = dd[k][i] * uu[k][i] * Bv[i];
#elif RULE == R_DIRAC || RULE == R_S7
                    bu[k][i] = uu[k][i] * Bv[i];
#elif RULE == R_RGLRU
                    bu[k][i] = sqrtf(fmaxf(fmaf(-ab[k][i], ab[k][i], 1.f), 0.f)) * Bv[i] * uu[k][i];
#else
                    bu[k][i] = gbar(dd[k][i], a) * Bv[i] * uu[k][i];
#endif
                    S[k] = fmaf(ab[k][i], S[k], bu[k][i]);
#if !EXP_RULE
                    P[k] *= ab[k][i];
#endif
                }
#if EXP_RULE
                P[k] = abar_prod(sx[k], al);  // Π_i e^{x_i·a}
#endif
                hc[k] = sH[c * NSTATE + n];
            }
            scan_up<KCH>(s, P, S, Pe, Se);
            __syncwarp();
#pragma unroll
            for (int k = 0; k < KCH; k++) {
                const int c = set * KCH + k;
                if (s == SEG - 1) sH[c * NSTATE + n] = fmaf(P[k], hc[k], S[k]);
#if BC_FIXED
#pragma unroll
                for (int i = 0; i < ITEMS; i++) Cv[i] = sCf[c * NSTATE + n];
#endif
                float h = fmaf(Pe[k], hc[k], Se[k]);
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
                    h = fmaf(ab[k][i], h, bu[k][i]);
                    yy[k][i] = fmaf(Cv[i], h, yy[k][i]);
                }
            }
        }
#else
        // complex A: h ∈ ℂ, y = 2·Re(Σ_n C_t[n] h_t[n]); B_t, C_t, A, h interleaved (re, im)
#pragma unroll 1
        for (int n = 0; n < NSTATE; n++) {
            float Br[ITEMS], Bi[ITEMS], Cr[ITEMS], Ci[ITEMS];
            ld_items(sB + (2 * n) * TS + tl, Br);
            ld_items(sB + (2 * n + 1) * TS + tl, Bi);
            ld_items(sC + (2 * n) * TS + tl, Cr);
            ld_items(sC + (2 * n + 1) * TS + tl, Ci);
            cf ab[KCH][ITEMS], bu[KCH][ITEMS], P[KCH], S[KCH], Pe[KCH], Se[KCH], hc[KCH];
#pragma unroll
            for (int k = 0; k < KCH; k++) {
                const int c = set * KCH + k;
                const cf a = {sA[c * NS + 2 * n], sA[c * NS + 2 * n + 1]};
                P[k] = {1.f, 0.f};
                S[k] = {0.f, 0.f};
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
#if HAS_DTA
                    const float x = da[k][i];
#else
                    const float x = dd[k][i];
#endif
                    ab[k][i] = cabar(x, a);
                    const cf gb = cgbar(dd[k][i], a);
                    bu[k][i] = cscale(cmul(gb, cf{Br[i], Bi[i]}), uu[k][i]);
                    S[k] = cfma(ab[k][i], S[k], bu[k][i]);
                    P[k] = cmul(P[k], ab[k][i]);
                }
                hc[k] = {sH[c * NS + 2 * n], sH[c * NS + 2 * n + 1]};
            }
            cscan_up<KCH>(s, P, S, Pe, Se);
            __syncwarp();
#pragma unroll
            for (int k = 0; k < KCH; k++) {
                const int c = set * KCH + k;
                if (s == SEG - 1) {
                    const cf hn = cfma(P[k], hc[k], S[k]);
                    sH[c * NS + 2 * n] = hn.r;
                    sH[c * NS + 2 * n + 1] = hn.i;
                }
                cf h = cfma(Pe[k], hc[k], Se[k]);
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
                    h = cfma(ab[k][i], h, bu[k][i]);
                    yy[k][i] += 2.f * (Cr[i] * h.r - Ci[i] * h.i);
                }
            }
        }
#endif  // COMPLEX
#pragma unroll
        for (int k = 0; k < KCH; k++) {
#if HAS_Z
            float zz[ITEMS];
            ld_items(sZ + (set * KCH + k) * TS + tl, zz);
#endif
#pragma unroll
            for (int i = 0; i < ITEMS; i++) {
                yy[k][i] = fmaf(Dd[k], uu[k][i], yy[k][i]);
#if HAS_Z
                yy[k][i] *= zz[i] / (1.f + __expf(-zz[i]));
#endif
            }
            st_items(sU + (set * KCH + k) * TS + tl, yy[k]);
        }
        __syncthreads();
        unstage_ble(y, sU, b, t0, e0, L, E);
    }
    __syncthreads();
    for (int j = tid; j < CB * NS; j += NT) {
        const int c = j / NS;
        if (e0 + c < E) last[((size_t)b * E + e0) * NS + j] = sH[j];
    }
}

// ---------------------------------------------------------------------------------------------
// Backward.  Same grid/block as the forward, dynamic shared memory bwd_shared_bytes. Writes du,
// ddelta (w.r.t. the raw delta), ddeltaA (HAS_DTA), dz (HAS_Z), and partials:
//   pBC  : time-varying dB/dC summed over the CB channels of each block: (Bsz, ⌈E/CB⌉, L, 2N)
//   pE   : per (batch, channel) sums over time: (Bsz, E, 3N + 2) =
//          [dA (N) | dB fixed (N) | dC fixed (N) | dD | d(delta_bias)]
extern "C" __global__ void __launch_bounds__(NT)
ss_bwd(const float* __restrict__ u, const float* __restrict__ dt, const float* __restrict__ dta,
       const float* __restrict__ A, const float* __restrict__ Bm, const float* __restrict__ Cm,
       const float* __restrict__ Dv, const float* __restrict__ z, const float* __restrict__ dbias,
       const float* __restrict__ dy, const float* __restrict__ hs, float* __restrict__ du,
       float* __restrict__ ddt, float* __restrict__ ddta, float* __restrict__ dz,
       float* __restrict__ pBC, float* __restrict__ pE, int L, int E, int G) {
    extern __shared__ float4 smem4[];
    float* nx = reinterpret_cast<float*>(smem4);
    float* sU = nx; nx += CB * TS;   // [CB][TS] u, then du
    float* sR = nx; nx += CB * TS;   // raw delta, then ddelta
    float* sY = nx; nx += CB * TS;   // dy
#if HAS_Z
    float* sZ = nx; nx += CB * TS;   // z, then dz
#endif
#if HAS_DTA
    float* sDA = nx; nx += CB * TS;  // deltaA, then ddeltaA
#endif
#if !BC_FIXED
    float* sB = nx; nx += NS * TS;         // [N][TS]
    float* sC = nx; nx += NS * TS;
    float* sP = nx; nx += 2 * CS * 2 * NV * TS;  // [2][CS][2·NV][TS] per-set dB/dC of one state
    float* sAcc = nx; nx += TCH * 2 * NS;  // [TCH][2N] block sums of the chunk
#endif
    float* sA = nx; nx += CB * NS;   // [CB][N]
    float* sHc = nx; nx += CB * NS;  // [CB][N] state at the chunk start (forward's hs)
    float* sM = nx; nx += CB * NS;   // [CB][N] adjoint carried from the later chunk
    float* sGA = nx; nx += CB * NS;  // [CB][N] dA sums
#if BC_FIXED
    float* sBf = nx; nx += CB * NS;
    float* sCf = nx; nx += CB * NS;
    float* sGB = nx; nx += CB * NS;
    float* sGC = nx; nx += CB * NS;
#endif
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int set = warp * CPW + lane / SEG, s = lane % SEG;
    const int b = blockIdx.y, e0 = blockIdx.x * CB;
    const int g = BC_FIXED ? 0 : e0 / (E / G);
    (void)g;
    const int nck = (L + TCH - 1) / TCH;
    const int nblk = gridDim.x;
    (void)nblk;
    for (int j = tid; j < CB * NS; j += NT) {
        sM[j] = 0.f; sGA[j] = 0.f;
#if BC_FIXED
        sGB[j] = 0.f; sGC[j] = 0.f;
#endif
    }
    stage_en(A, sA, e0, E);
#if BC_FIXED
    stage_en(Bm, sBf, e0, E);
    stage_en(Cm, sCf, e0, E);
#endif
    bool act[KCH];
    float Dd[KCH], db[KCH], gD[KCH], gDB[KCH];
#pragma unroll
    for (int k = 0; k < KCH; k++) {
        const int e = e0 + set * KCH + k;
        act[k] = e < E;
        Dd[k] = HAS_D ? Dv[min(e, E - 1)] : 0.f;
        db[k] = HAS_DB ? dbias[min(e, E - 1)] : 0.f;
        gD[k] = 0.f; gDB[k] = 0.f;
    }
    (void)Dd;

    for (int ck = nck - 1; ck >= 0; ck--) {
        const int t0 = ck * TCH;
        __syncthreads();
        stage_ble(u, sU, b, t0, e0, L, E);
        stage_ble(dt, sR, b, t0, e0, L, E);
        stage_ble(dy, sY, b, t0, e0, L, E);
#if HAS_Z
        stage_ble(z, sZ, b, t0, e0, L, E);
#endif
#if HAS_DTA
        stage_ble(dta, sDA, b, t0, e0, L, E);
#endif
#if !BC_FIXED
        stage_bc(Bm, sB, b, t0, L, G, g);
        stage_bc(Cm, sC, b, t0, L, G, g);
#endif
        for (int j = tid; j < CB * NS; j += NT) {
            const int n = j / CB, c = j % CB;
            const bool ok = e0 + c < E;
            cp4(sHc + c * NS + n,
                ok ? hs + (((size_t)b * nck + ck) * NS + n) * E + e0 + c : hs, ok);
        }
        cp_wait();
        __syncthreads();
        const int tl = s * ITEMS;
        // per-item values: u, Δ, ΔA, G = ∂L/∂(pre-gate y), and accumulators
        float uu[KCH][ITEMS], dd[KCH][ITEMS], Gq[KCH][ITEMS], sx[KCH];
        float gdu[KCH][ITEMS], gd[KCH][ITEMS];
#if HAS_DTA
        float da[KCH][ITEMS], gda[KCH][ITEMS];
#endif
#if HAS_Z
        float yp[KCH][ITEMS];
#endif
#pragma unroll
        for (int k = 0; k < KCH; k++) {
            const int c = set * KCH + k;
            ld_items(sU + c * TS + tl, uu[k]);
            ld_items(sR + c * TS + tl, dd[k]);
            ld_items(sY + c * TS + tl, Gq[k]);
#if HAS_DTA
            ld_items(sDA + c * TS + tl, da[k]);
#endif
#if HAS_Z
            float zz[ITEMS];
            ld_items(sZ + c * TS + tl, zz);
#endif
            sx[k] = 0.f;
#pragma unroll
            for (int i = 0; i < ITEMS; i++) {
                const bool valid = t0 + tl + i < L;
                dd[k][i] = delta_of(dd[k][i], db[k], valid);
#if HAS_DTA
                if (!valid) da[k][i] = 0.f;
                gda[k][i] = 0.f;
                sx[k] += da[k][i];
#else
                sx[k] += dd[k][i];
#endif
#if HAS_Z
                Gq[k][i] *= zz[i] / (1.f + __expf(-zz[i]));
                yp[k][i] = 0.f;
#endif
                gdu[k][i] = 0.f; gd[k][i] = 0.f;
            }
        }
#if !COMPLEX
#pragma unroll 2  // two states in flight (ILP)
        for (int n = 0; n < NSTATE; n++) {
            float Bv[ITEMS], Cv[ITEMS];
#if !BC_FIXED
            ld_items(sB + n * TS + tl, Bv);
            ld_items(sC + n * TS + tl, Cv);
            float vb[ITEMS], vc[ITEMS];
#pragma unroll
            for (int i = 0; i < ITEMS; i++) { vb[i] = 0.f; vc[i] = 0.f; }
#endif
#pragma unroll
            for (int k = 0; k < KCH; k++) {
                const int c = set * KCH + k;
                const float a = sA[c * NSTATE + n], al = alog2(a);
#if BC_FIXED
#pragma unroll
                for (int i = 0; i < ITEMS; i++) { Bv[i] = sBf[c * NSTATE + n]; Cv[i] = sCf[c * NSTATE + n]; }
#endif
                float ab[ITEMS], gb[ITEMS], hh[ITEMS + 1];
                float P = 1.f, S = 0.f;
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
#if HAS_DTA
                    const float x = da[k][i];
#else
                    const float x = dd[k][i];
#endif
                    ab[i] = abar_at(x, a, al, t0 + tl + i < L);
#if RULE == R_RGLRU
                    gb[i] = sqrtf(fmaxf(fmaf(-ab[i], ab[i], 1.f), 0.f));
#else
                    gb[i] = gbar(dd[k][i], a);
#endif
                    S = fmaf(ab[i], S, gb[i] * Bv[i] * uu[k][i]);
#if !EXP_RULE
                    P *= ab[i];
#endif
                }
#if EXP_RULE
                P = abar_prod(sx[k], al);
#endif
                // the states before each step and after the last (one channel at a time keeps
                // the registers low)
                {
                    float P1[1] = {P}, S1[1] = {S}, Pe1[1], Se1[1];
                    scan_up<1>(s, P1, S1, Pe1, Se1);
                    hh[0] = fmaf(Pe1[0], sHc[c * NSTATE + n], Se1[0]);
                }
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
                    hh[i + 1] = fmaf(ab[i], hh[i], gb[i] * Bv[i] * uu[k][i]);
#if HAS_Z
                    yp[k][i] = fmaf(Cv[i], hh[i + 1], yp[k][i]);
#endif
                }
                // adjoint: m_t = Ā_t (G_t C_t + m_{t+1}), composed from the right
                float R = 0.f;
#pragma unroll
                for (int i = ITEMS - 1; i >= 0; i--) R = ab[i] * fmaf(Gq[k][i], Cv[i], R);
                float Q[1] = {P}, R1[1] = {R}, Qe[1], Re[1];
                const float mc = sM[c * NSTATE + n];
                scan_down<1>(s, Q, R1, Qe, Re);
                __syncwarp();
                if (s == 0) sM[c * NSTATE + n] = fmaf(Q[0], mc, R1[0]);
                float m = fmaf(Qe[0], mc, Re[0]);
                float gA = 0.f;
#if BC_FIXED
                float gbf = 0.f, gcf = 0.f;
#endif
#pragma unroll
                for (int i = ITEMS - 1; i >= 0; i--) {
#if HAS_DTA
                    const float x = da[k][i];
#else
                    const float x = dd[k][i];
#endif
                    const float lam = fmaf(Gq[k][i], Cv[i], m);
                    m = ab[i] * lam;
                    const float lb = lam * Bv[i];
                    // gx = ∂L/∂ΔA (through Ā and, for rglru, γ̄(Ā))
#if RULE == R_BILINEAR
                    const float dx = lam * hh[i] * dabar(ab[i], x * a);  // ∂L/∂(ΔA·a)
                    gA = fmaf(dx, x, gA);
                    const float gx = dx * a;
#elif RULE == R_S7
                    const float q = fmaf(x, x, 0.5f);
                    const float gx = lam * hh[i] * (2.f * x / (q * q));
#elif RULE == R_RGLRU
                    // w = ΔA·ln A: dĀ/dw = Ā, dγ̄/dw = −Ā²/γ̄
                    float dw = m * hh[i];
                    if (gb[i] > 0.f) dw -= lb * uu[k][i] * ab[i] * ab[i] / gb[i];
                    gA = fmaf(dw, x / a, gA);
                    const float gx = dw * (al * 0.6931471805599453f);
#else
                    const float dx = m * hh[i];  // ∂L/∂(ΔA·a)
                    gA = fmaf(dx, x, gA);
                    const float gx = dx * a;
#endif
#if HAS_DTA
                    gda[k][i] += gx;
#else
                    gd[k][i] += gx;
#endif
                    gdu[k][i] = fmaf(lb, gb[i], gdu[k][i]);
#if RULE == R_MAMBA
                    gd[k][i] = fmaf(lb, uu[k][i], gd[k][i]);
#elif RULE == R_ZOH || RULE == R_BILINEAR
                    {
                        float gbd, gba;
                        gbar_partials(dd[k][i], a, gb[i], gbd, gba);
                        const float dgb = lb * uu[k][i];  // ∂L/∂γ̄
                        gd[k][i] = fmaf(dgb, gbd, gd[k][i]);
                        gA = fmaf(dgb, gba, gA);
                    }
#endif
                    const float vbi = lam * gb[i] * uu[k][i];
                    const float vci = Gq[k][i] * hh[i + 1];
#if BC_FIXED
                    gbf += vbi;
                    gcf += vci;
#else
                    vb[i] += vbi;
                    vc[i] += vci;
#endif
                }
                gA = sum_seg(gA);
#if BC_FIXED
                gbf = sum_seg(gbf);
                gcf = sum_seg(gcf);
#endif
                if (s == 0) {
                    sGA[c * NSTATE + n] += gA;
#if BC_FIXED
                    sGB[c * NSTATE + n] += gbf;
                    sGC[c * NSTATE + n] += gcf;
#endif
                }
            }
#if !BC_FIXED
            // dB/dC of this state: per-set sums, then the sets of the block in set order
            {
                float* pp = sP + (n & 1) * (CS * 2 * TS);
                st_items(pp + (set * 2) * TS + tl, vb);
                st_items(pp + (set * 2 + 1) * TS + tl, vc);
                __syncthreads();
                for (int o = tid; o < 2 * TCH; o += NT) {
                    const int which = o / TCH, t = o % TCH;
                    float acc = 0.f;
#pragma unroll 4
                    for (int q = 0; q < CS; q++) acc += pp[(q * 2 + which) * TS + t];
                    sAcc[t * 2 * NS + which * NS + n] = acc;
                }
            }
#endif
        }
#else
        // complex A (see the forward): adjoints as ∂L/∂Re + i·∂L/∂Im; λ_t = 2·G_t·conj(C_t) +
        // conj(Ā_{t+1})·λ_{t+1}
#pragma unroll 1
        for (int n = 0; n < NSTATE; n++) {
            float Br[ITEMS], Bi[ITEMS], Cr[ITEMS], Ci[ITEMS];
            ld_items(sB + (2 * n) * TS + tl, Br);
            ld_items(sB + (2 * n + 1) * TS + tl, Bi);
            ld_items(sC + (2 * n) * TS + tl, Cr);
            ld_items(sC + (2 * n + 1) * TS + tl, Ci);
            float vbr[ITEMS], vbi[ITEMS], vcr[ITEMS], vci[ITEMS];
#pragma unroll
            for (int i = 0; i < ITEMS; i++) { vbr[i] = 0.f; vbi[i] = 0.f; vcr[i] = 0.f; vci[i] = 0.f; }
#pragma unroll
            for (int k = 0; k < KCH; k++) {
                const int c = set * KCH + k;
                const cf a = {sA[c * NS + 2 * n], sA[c * NS + 2 * n + 1]};
                cf ab[ITEMS], gb[ITEMS], hh[ITEMS + 1];
                cf P = {1.f, 0.f}, S = {0.f, 0.f};
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
#if HAS_DTA
                    const float x = da[k][i];
#else
                    const float x = dd[k][i];
#endif
                    ab[i] = cabar(x, a);
                    gb[i] = cgbar(dd[k][i], a);
                    S = cfma(ab[i], S, cscale(cmul(gb[i], cf{Br[i], Bi[i]}), uu[k][i]));
                    P = cmul(P, ab[i]);
                }
                {
                    cf P1[1] = {P}, S1[1] = {S}, Pe1[1], Se1[1];
                    cscan_up<1>(s, P1, S1, Pe1, Se1);
                    hh[0] = cfma(Pe1[0], cf{sHc[c * NS + 2 * n], sHc[c * NS + 2 * n + 1]}, Se1[0]);
                }
#pragma unroll
                for (int i = 0; i < ITEMS; i++) {
                    hh[i + 1] = cfma(ab[i], hh[i], cscale(cmul(gb[i], cf{Br[i], Bi[i]}), uu[k][i]));
#if HAS_Z
                    yp[k][i] += 2.f * (Cr[i] * hh[i + 1].r - Ci[i] * hh[i + 1].i);
#endif
                }
                // adjoint carried backward: m_t = conj(Ā_t)·(β_t + m_{t+1}), β_t = 2·G_t·conj(C_t)
                cf R = {0.f, 0.f};
#pragma unroll
                for (int i = ITEMS - 1; i >= 0; i--) {
                    const cf beta = {2.f * Gq[k][i] * Cr[i], -2.f * Gq[k][i] * Ci[i]};
                    R = cmul(cconj(ab[i]), cadd(R, beta));
                }
                cf Q[1] = {cconj(P)}, R1[1] = {R}, Qe[1], Re[1];
                const cf mc = {sM[c * NS + 2 * n], sM[c * NS + 2 * n + 1]};
                cscan_down<1>(s, Q, R1, Qe, Re);
                __syncwarp();
                if (s == 0) {
                    const cf mn = cfma(Q[0], mc, R1[0]);
                    sM[c * NS + 2 * n] = mn.r;
                    sM[c * NS + 2 * n + 1] = mn.i;
                }
                cf m = cfma(Qe[0], mc, Re[0]);
                cf gA = {0.f, 0.f};
#pragma unroll
                for (int i = ITEMS - 1; i >= 0; i--) {
#if HAS_DTA
                    const float x = da[k][i];
#else
                    const float x = dd[k][i];
#endif
                    const cf beta = {2.f * Gq[k][i] * Cr[i], -2.f * Gq[k][i] * Ci[i]};
                    const cf lam = cadd(beta, m);
                    m = cmul(cconj(ab[i]), lam);
                    const cf gx = cmul(cconj(cmul(cdabar(ab[i], x, a), hh[i])), lam);  // ∂L/∂x
                    gA = cadd(gA, cscale(gx, x));
                    const float gxa = gx.r * a.r + gx.i * a.i;  // Re(conj(a)·gx): ∂L/∂ΔA
#if HAS_DTA
                    gda[k][i] += gxa;
#else
                    gd[k][i] += gxa;
#endif
                    const cf B = {Br[i], Bi[i]};
                    const cf gg = cscale(cmul(lam, cconj(B)), uu[k][i]);  // ∂L/∂γ̄
                    const cf gbB = cmul(gb[i], B);
                    gdu[k][i] += lam.r * gbB.r + lam.i * gbB.i;  // Re(λ·conj(γ̄B))
#if RULE == R_MAMBA
                    gd[k][i] += gg.r;
#elif RULE == R_ZOH || RULE == R_BILINEAR
                    {
                        cf gbd, gba;
                        cgbar_partials(dd[k][i], a, gb[i], gbd, gba);
                        gd[k][i] += gg.r * gbd.r + gg.i * gbd.i;  // Re(gg·conj(∂γ̄/∂Δ))
                        gA = cadd(gA, cmul(cconj(gba), gg));
                    }
#endif
                    const cf vb = cscale(cmul(lam, cconj(gb[i])), uu[k][i]);
                    vbr[i] += vb.r;
                    vbi[i] += vb.i;
                    vcr[i] += 2.f * Gq[k][i] * hh[i + 1].r;
                    vci[i] -= 2.f * Gq[k][i] * hh[i + 1].i;
                }
                gA.r = sum_seg(gA.r);
                gA.i = sum_seg(gA.i);
                if (s == 0) {
                    sGA[c * NS + 2 * n] += gA.r;
                    sGA[c * NS + 2 * n + 1] += gA.i;
                }
            }
            // dB/dC of this state: per-set sums, then the sets of the block in set order
            {
                float* pp = sP + (n & 1) * (CS * 4 * TS);
                st_items(pp + (set * 4) * TS + tl, vbr);
                st_items(pp + (set * 4 + 1) * TS + tl, vbi);
                st_items(pp + (set * 4 + 2) * TS + tl, vcr);
                st_items(pp + (set * 4 + 3) * TS + tl, vci);
                __syncthreads();
                for (int o = tid; o < 4 * TCH; o += NT) {
                    const int which = o / TCH, t = o % TCH;
                    float acc = 0.f;
#pragma unroll 4
                    for (int q = 0; q < CS; q++) acc += pp[(q * 4 + which) * TS + t];
                    // which: 0 dB re, 1 dB im, 2 dC re, 3 dC im
                    sAcc[t * 2 * NS + (which >> 1) * NS + 2 * n + (which & 1)] = acc;
                }
            }
        }
#endif  // COMPLEX
        // per-item outputs, written in place into the staged tiles
#pragma unroll
        for (int k = 0; k < KCH; k++) {
            const int c = set * KCH + k;
            float o1[ITEMS], o2[ITEMS], raw[ITEMS];
            ld_items(sR + c * TS + tl, raw);
#if HAS_Z
            float zz[ITEMS], dyv[ITEMS], o3[ITEMS];
            ld_items(sZ + c * TS + tl, zz);
            ld_items(sY + c * TS + tl, dyv);
#endif
#pragma unroll
            for (int i = 0; i < ITEMS; i++) {
                const bool valid = t0 + tl + i < L;
                float draw = gd[k][i];
#if SOFTPLUS
                {
                    float r = raw[i];
#if HAS_DB
                    r += db[k];
#endif
                    float sg;
                    (void)softplus_sig(r, &sg);  // σ(r) alone (the value is not used)
                    draw *= sg;
                }
#endif
                o1[i] = fmaf(Dd[k], Gq[k][i], gdu[k][i]);
                o2[i] = draw;
                if (valid) {
                    gD[k] = fmaf(Gq[k][i], uu[k][i], gD[k]);
                    gDB[k] += draw;
                }
#if HAS_Z
                {
                    const float sg = 1.f / (1.f + __expf(-zz[i]));
                    const float dzf = dyv[i] * sg * (1.f + zz[i] * (1.f - sg));
                    o3[i] = dzf * fmaf(Dd[k], uu[k][i], yp[k][i]);
                }
#endif
            }
            st_items(sU + c * TS + tl, o1);
            st_items(sR + c * TS + tl, o2);
#if HAS_Z
            st_items(sZ + c * TS + tl, o3);
#endif
#if HAS_DTA
            st_items(sDA + c * TS + tl, gda[k]);
#endif
        }
        __syncthreads();
        unstage_ble(du, sU, b, t0, e0, L, E);
        unstage_ble(ddt, sR, b, t0, e0, L, E);
#if HAS_Z
        unstage_ble(dz, sZ, b, t0, e0, L, E);
#else
        (void)dz;
#endif
#if HAS_DTA
        unstage_ble(ddta, sDA, b, t0, e0, L, E);
#else
        (void)ddta;
#endif
#if !BC_FIXED
        {
            const int nt = min(TCH, L - t0) * 2 * NS;
            float* dst = pBC + (((size_t)b * nblk + blockIdx.x) * L + t0) * (2 * NS);
            for (int j = tid; j < nt; j += NT) dst[j] = sAcc[j];
        }
#else
        (void)pBC;
#endif
    }
    __syncthreads();
    const int NE = 3 * NS + 2;
#pragma unroll
    for (int k = 0; k < KCH; k++) {
        const float sd = sum_seg(gD[k]), sdb = sum_seg(gDB[k]);
        if (s == 0 && act[k]) {
            float* p = pE + ((size_t)b * E + e0 + set * KCH + k) * NE;
            p[3 * NS] = sd;
            p[3 * NS + 1] = sdb;
        }
    }
    for (int j = tid; j < CB * NS; j += NT) {
        const int c = j / NS, n = j % NS;
        if (e0 + c < E) {
            float* p = pE + ((size_t)b * E + e0 + c) * NE;
            p[n] = sGA[j];
#if BC_FIXED
            p[NS + n] = sGB[j];
            p[2 * NS + n] = sGC[j];
#else
            p[NS + n] = 0.f;
            p[2 * NS + n] = 0.f;
#endif
        }
    }
}

#endif  // !SEQ

// ---------------------------------------------------------------------------------------------
// dB, dC (time-varying) = Σ over the blocks of each group, in block order.
// pBC (Bsz, nblk, L, 2N) -> dB, dC (Bsz, L, G, N).  One thread per output pair element.
extern "C" __global__ void ss_reduce_bc(const float* __restrict__ pBC, float* __restrict__ dB,
                                        float* __restrict__ dC, int Bsz, int L, int G,
                                        int nblk) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t total = (size_t)Bsz * L * G * NS;
    if (i >= total) return;
    const int n = i % NS;
    const int g = (i / NS) % G;
    const int t = (i / ((size_t)NS * G)) % L;
    const int b = i / ((size_t)NS * G * L);
    const int bpg = nblk / G;
    float sb = 0.f, sc = 0.f;
    for (int j = 0; j < bpg; j++) {
        const size_t o = (((size_t)b * nblk + g * bpg + j) * L + t) * (2 * NS);
        sb += pBC[o + n];
        sc += pBC[o + NS + n];
    }
    dB[i] = sb;
    dC[i] = sc;
}

// Per-channel parameter gradients = Σ_b pE[b, e, q] in batch order.
// pE (Bsz, E, 3N + 2) -> out (E, 3N + 2)
extern "C" __global__ void ss_reduce_e(const float* __restrict__ pE, float* __restrict__ out,
                                       int Bsz, int E) {
    const int NE = 3 * NS + 2;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)E * NE) return;
    float acc = 0.f;
    for (int b = 0; b < Bsz; b++) acc += pE[(size_t)b * E * NE + i];
    out[i] = acc;
}
