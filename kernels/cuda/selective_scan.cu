// Selective scan (lrnnx spec §4.1, real A), forward and backward, fp32 state.
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
//
// Parallel structure: TPC threads per (batch, channel), each owning SPT = N/TPC states in
// registers and walking the whole sequence in order (no inter-thread scan). A warp holds
// CPW = 32/TPC consecutive channels (lane = channel_in_warp·TPC + q), a block NWARP warps, so
// every load along channels is coalesced and there are Bsz·E·TPC threads in all. The per-step
// scalars (u, Δ, z, ...) of TPC consecutive steps are loaded and computed once, by thread q for
// step t0 + q, and handed to the other TPC − 1 threads of the channel with shuffles; y_t is the
// sum of the TPC threads' partial dot products (xor shuffles).
//
// The forward stores the state at every chunk start (every CK = SUB·NSUB steps; hs:
// (Bsz, ⌈L/CK⌉, N, E)). The backward walks the chunks in reverse: from a chunk's checkpoint it
// re-runs the chunk forward, keeping the state at every sub-chunk start (SUB steps) in shared
// memory; then for each sub-chunk in reverse it re-runs its SUB steps keeping states and Ā in
// registers and walks them backward with the adjoint λ_t = G_t C_t + Ā_{t+1} λ_{t+1}.
//
// Determinism: every reduction is in a fixed order: xor shuffles over the TPC threads of a
// channel, a fixed butterfly reduce-scatter over the channels of a warp (time-varying dB/dC),
// per-warp partials summed in warp order in shared memory and per-segment partial buffers
// summed in segment order by ss_reduce_bc; per-channel sums over time in each thread's step
// order, over batch in index order by ss_reduce_e. No atomics.
//
// Compile-time parameters (defines): NSTATE, TPC, NWARP, SUB, NSUB, RULE, HAS_Z, HAS_D, HAS_DB,
// SOFTPLUS, HAS_DTA, BC_FIXED, SEGC (channels per dB/dC partial segment: a power of two dividing
// E/G; either ≤ CPW or a multiple of CPW dividing CPW·NWARP).

#ifndef NSTATE
#define NSTATE 16
#endif
#ifndef TPC
#define TPC 4
#endif
#ifndef NWARP
#define NWARP 4
#endif
#ifndef SUB
#define SUB 8
#endif
#ifndef NSUB
#define NSUB 8
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
#ifndef SEGC
#define SEGC 1
#endif

#define SPT (NSTATE / TPC)
#define CPW (32 / TPC)
#define CPB (CPW * NWARP)
#define NT (32 * NWARP)
#define CK (SUB * NSUB)
#define SPG (SUB / TPC)  // steps of a sub-chunk handled (scalars) by one thread
// channels reduced inside a warp, values per lane before / after the reduce-scatter
#define SEGL (SEGC < CPW ? SEGC : CPW)
#define V2 (2 * SPT)
#define VP (((V2 + SEGL - 1) / SEGL) * SEGL)
#define PER (VP / SEGL)
#define XWARP (SEGC > CPW)

#define R_MAMBA 0
#define R_ZOH 1
#define R_BILINEAR 2
#define R_DIRAC 3
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ float softplus_f(float x) {
    return x > 20.f ? x : log1pf(expf(x));
}
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

// Ā of x = ΔA·a; al = a·log2(e)
__device__ __forceinline__ float abar(float da, float a, float al) {
#if RULE == R_BILINEAR
    (void)al;
    float v = fminf(fmaxf(da * a, -2e18f), 2e18f);
    return (1.f + 0.5f * v) / (1.f - 0.5f * v);
#else
    (void)a;
    return ex2(da * al);
#endif
}
// dĀ/dx given Ā and x
__device__ __forceinline__ float dabar(float ab, float x) {
#if RULE == R_BILINEAR
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
// (γ̄, ∂γ̄/∂Δ, ∂γ̄/∂a)
__device__ __forceinline__ void gbar_grad(float d, float a, float& g, float& gd, float& ga) {
#if RULE == R_MAMBA
    (void)a;
    g = d; gd = 1.f; ga = 0.f;
#elif RULE == R_ZOH
    if (a == 0.f) { g = d; gd = 1.f; ga = 0.5f * d * d; }
    else {
        float em = expm1f(d * a);
        g = em / a; gd = em + 1.f; ga = (d * (em + 1.f) - g) / a;
    }
#elif RULE == R_BILINEAR
    float den = 1.f - 0.5f * d * a;
    g = d / den; gd = 1.f / (den * den); ga = 0.5f * d * d * gd;
#else
    (void)d; (void)a;
    g = 1.f; gd = 0.f; ga = 0.f;
#endif
}

// γ̄(Δ, a)·u·B with du = Δ·u (state-independent for the mamba and dirac rules)
__device__ __forceinline__ float gbub(float d, float u, float du, float a, float bv) {
#if RULE == R_MAMBA
    (void)d; (void)u; (void)a;
    return du * bv;
#elif RULE == R_DIRAC
    (void)d; (void)du; (void)a;
    return u * bv;
#else
    (void)du;
    return gbar(d, a) * bv * u;
#endif
}

// This thread's SPT entries of a time-varying B_t or C_t (zeros past the end).
__device__ __forceinline__ void load_bc(const float* __restrict__ M, int b, int t, int L, int G,
                                        int g, int n0, float* out) {
    if (t >= L) {
#pragma unroll
        for (int i = 0; i < SPT; i++) out[i] = 0.f;
        return;
    }
    const float* p = M + (((size_t)b * L + t) * G + g) * NSTATE + n0;
#if SPT % 4 == 0 && NSTATE % 4 == 0
#pragma unroll
    for (int i = 0; i < SPT; i += 4) {
        float4 v = __ldg(reinterpret_cast<const float4*>(p + i));
        out[i] = v.x; out[i + 1] = v.y; out[i + 2] = v.z; out[i + 3] = v.w;
    }
#elif SPT % 2 == 0 && NSTATE % 2 == 0
#pragma unroll
    for (int i = 0; i < SPT; i += 2) {
        float2 v = __ldg(reinterpret_cast<const float2*>(p + i));
        out[i] = v.x; out[i + 1] = v.y;
    }
#else
#pragma unroll
    for (int i = 0; i < SPT; i++) out[i] = __ldg(p + i);
#endif
}

// Per-step scalars of one (batch, step, channel): raw delta, Δ, ΔA, u.
struct Step {
    float u, raw, d, da;
};

__device__ __forceinline__ Step load_step(const float* __restrict__ u, const float* __restrict__ dt,
                                          const float* __restrict__ dta, float db, size_t idx,
                                          bool valid) {
    Step s;
    if (!valid) { s.u = 0.f; s.raw = 0.f; s.d = 0.f; s.da = 0.f; return s; }
    s.u = __ldg(u + idx);
    float d = __ldg(dt + idx);
#if HAS_DB
    d += db;
#else
    (void)db;
#endif
    s.raw = d;
#if SOFTPLUS
    d = softplus_f(d);
#endif
    s.d = d;
#if HAS_DTA
    s.da = __ldg(dta + idx);
#else
    (void)dta;
    s.da = d;
#endif
    return s;
}

// value of thread k (of the TPC threads of this channel)
#define FROM(v, k) __shfl_sync(0xffffffffu, (v), (k), TPC)

__device__ __forceinline__ float sum_tpc(float v) {
#pragma unroll
    for (int o = TPC / 2; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Forward.  grid (ceil(E / CPB), Bsz), block (NT).
extern "C" __global__ void __launch_bounds__(NT)
ss_fwd(const float* __restrict__ u, const float* __restrict__ dt, const float* __restrict__ dta,
       const float* __restrict__ A, const float* __restrict__ Bm, const float* __restrict__ Cm,
       const float* __restrict__ Dv, const float* __restrict__ z, const float* __restrict__ dbias,
       float* __restrict__ y, float* __restrict__ hs, float* __restrict__ last, int L, int E,
       int G) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q = lane % TPC, cl = lane / TPC;
    const int e = blockIdx.x * CPB + warp * CPW + cl;
    const int b = blockIdx.y;
    const bool act = e < E;
    const int ec = act ? e : E - 1;
    const int g = BC_FIXED ? 0 : ec / (E / G);
    (void)g;
    const int n0 = q * SPT;
    const int nck = (L + CK - 1) / CK;

    float Ar[SPT], Al[SPT], h[SPT];
#pragma unroll
    for (int i = 0; i < SPT; i++) {
        Ar[i] = A[ec * NSTATE + n0 + i];
        Al[i] = Ar[i] * LOG2E;
        h[i] = 0.f;
    }
#if BC_FIXED
    float Bf[SPT], Cf[SPT];
#pragma unroll
    for (int i = 0; i < SPT; i++) { Bf[i] = Bm[ec * NSTATE + n0 + i]; Cf[i] = Cm[ec * NSTATE + n0 + i]; }
#endif
    const float Dd = HAS_D ? Dv[ec] : 0.f;
    const float db = HAS_DB ? dbias[ec] : 0.f;
    (void)Dd;
    const size_t rowb = (size_t)b * L;

    // software pipeline: the scalars, B and C of the next TPC steps are loaded one group ahead
    Step nx = load_step(u, dt, dta, db, (rowb + q) * E + ec, q < L);
#if HAS_Z
    float znx = q < L ? __ldg(z + (rowb + q) * E + ec) : 0.f;
#endif
#if !BC_FIXED
    float Bn[TPC][SPT], Cn[TPC][SPT];
#pragma unroll
    for (int k = 0; k < TPC; k++) {
        load_bc(Bm, b, k, L, G, g, n0, Bn[k]);
        load_bc(Cm, b, k, L, G, g, n0, Cn[k]);
    }
#endif
    for (int t0 = 0; t0 < L; t0 += TPC) {
        if (t0 % CK == 0 && act) {
#pragma unroll
            for (int i = 0; i < SPT; i++)
                hs[(((size_t)b * nck + t0 / CK) * NSTATE + n0 + i) * E + e] = h[i];
        }
        const Step cur = nx;
#if HAS_Z
        const float zq = znx;
#endif
#if !BC_FIXED
        float Bc[TPC][SPT], Cc[TPC][SPT];
#pragma unroll
        for (int k = 0; k < TPC; k++)
#pragma unroll
            for (int i = 0; i < SPT; i++) { Bc[k][i] = Bn[k][i]; Cc[k][i] = Cn[k][i]; }
#endif
        {
            const int tn = t0 + TPC + q;
            nx = load_step(u, dt, dta, db, (rowb + tn) * E + ec, tn < L);
#if HAS_Z
            znx = tn < L ? __ldg(z + (rowb + tn) * E + ec) : 0.f;
#endif
#if !BC_FIXED
#pragma unroll
            for (int k = 0; k < TPC; k++) {
                load_bc(Bm, b, t0 + TPC + k, L, G, g, n0, Bn[k]);
                load_bc(Cm, b, t0 + TPC + k, L, G, g, n0, Cn[k]);
            }
#endif
        }
        float accq = 0.f;
#pragma unroll
        for (int k = 0; k < TPC; k++) {
            const float uk = FROM(cur.u, k), dk = FROM(cur.d, k);
#if HAS_DTA
            const float dak = FROM(cur.da, k);
#else
            const float dak = dk;
#endif
            const float duk = dk * uk;
#if BC_FIXED
            const float* Bv = Bf;
            const float* Cv = Cf;
#else
            const float* Bv = Bc[k];
            const float* Cv = Cc[k];
#endif
            float acc = 0.f;
#pragma unroll
            for (int i = 0; i < SPT; i++) {
                h[i] = abar(dak, Ar[i], Al[i]) * h[i] + gbub(dk, uk, duk, Ar[i], Bv[i]);
                acc += Cv[i] * h[i];
            }
            acc = sum_tpc(acc);
            if (q == k) accq = acc;
        }
        const int tq = t0 + q;
        if (act && tq < L) {
            const size_t idx = (rowb + tq) * E + e;
            float out = accq + Dd * cur.u;
#if HAS_Z
            out *= zq / (1.f + expf(-zq));
#else
            (void)z;
#endif
            y[idx] = out;
        }
    }
    if (act && last != nullptr) {
#pragma unroll
        for (int i = 0; i < SPT; i++) last[((size_t)b * E + e) * NSTATE + n0 + i] = h[i];
    }
}

// ---------------------------------------------------------------------------------------------
// Backward.  Same grid/block as the forward. Writes du, ddelta (w.r.t. the raw delta),
// ddeltaA (HAS_DTA), dz (HAS_Z), and partials:
//   pBC  : time-varying dB/dC partial sums over one segment of SEGC channels:
//          (Bsz, E/SEGC, L, 2N)
//   pE   : per (batch, channel) sums over time: (Bsz, E, 3N + 2) =
//          [dA (N) | dB fixed (N) | dC fixed (N) | dD | d(delta_bias)]
extern "C" __global__ void __launch_bounds__(NT)
ss_bwd(const float* __restrict__ u, const float* __restrict__ dt, const float* __restrict__ dta,
       const float* __restrict__ A, const float* __restrict__ Bm, const float* __restrict__ Cm,
       const float* __restrict__ Dv, const float* __restrict__ z, const float* __restrict__ dbias,
       const float* __restrict__ dy, const float* __restrict__ hs, float* __restrict__ du,
       float* __restrict__ ddt, float* __restrict__ ddta, float* __restrict__ dz,
       float* __restrict__ pBC, float* __restrict__ pE, int L, int E, int G) {
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int q = lane % TPC, cl = lane / TPC;
    const int e = blockIdx.x * CPB + warp * CPW + cl;
    const int b = blockIdx.y;
    const bool act = e < E;
    const int ec = act ? e : E - 1;
    const int g = BC_FIXED ? 0 : ec / (E / G);
    (void)g;
    const int n0 = q * SPT;
    const int nck = (L + CK - 1) / CK;
    const size_t rowb = (size_t)b * L;

    __shared__ float sCk[NSUB][SPT][NT];  // state at each sub-chunk start
#if !BC_FIXED && XWARP
    __shared__ float sR[NWARP][SUB][32 * PER];
#endif

    float Ar[SPT], Al[SPT];
#pragma unroll
    for (int i = 0; i < SPT; i++) { Ar[i] = A[ec * NSTATE + n0 + i]; Al[i] = Ar[i] * LOG2E; }
#if BC_FIXED
    float Bf[SPT], Cf[SPT], gBf[SPT], gCf[SPT];
#pragma unroll
    for (int i = 0; i < SPT; i++) {
        Bf[i] = Bm[ec * NSTATE + n0 + i]; Cf[i] = Cm[ec * NSTATE + n0 + i];
        gBf[i] = 0.f; gCf[i] = 0.f;
    }
#endif
    const float Dd = HAS_D ? Dv[ec] : 0.f;
    const float db = HAS_DB ? dbias[ec] : 0.f;
    (void)Dd;
    float gA[SPT], m[SPT];  // m = Ā_{t+1} λ_{t+1}, carried backward
#pragma unroll
    for (int i = 0; i < SPT; i++) { gA[i] = 0.f; m[i] = 0.f; }
    float gD = 0.f, gDB = 0.f;

    for (int c = nck - 1; c >= 0; c--) {
        // pass 1: the chunk forward from its checkpoint, keeping sub-chunk start states
        {
            float h[SPT];
#pragma unroll
            for (int i = 0; i < SPT; i++)
                h[i] = hs[(((size_t)b * nck + c) * NSTATE + n0 + i) * E + ec];
            for (int j = 0; j < NSUB; j++) {
                const int t1 = c * CK + j * SUB;
#pragma unroll
                for (int i = 0; i < SPT; i++) sCk[j][i][tid] = h[i];
                if (t1 >= L || j == NSUB - 1) continue;
#pragma unroll
                for (int r = 0; r < SPG; r++) {
                    const int tq = t1 + r * TPC + q;
                    const Step s = load_step(u, dt, dta, db, (rowb + tq) * E + ec, tq < L);
#pragma unroll
                    for (int k = 0; k < TPC; k++) {
                        const float uk = FROM(s.u, k), dk = FROM(s.d, k); const float duk = dk * uk; (void)duk;
#if HAS_DTA
                        const float dak = FROM(s.da, k);
#else
                        const float dak = dk;
#endif
                        float Bv[SPT];
#if BC_FIXED
#pragma unroll
                        for (int i = 0; i < SPT; i++) Bv[i] = Bf[i];
#else
                        load_bc(Bm, b, t1 + r * TPC + k, L, G, g, n0, Bv);
#endif
#pragma unroll
                        for (int i = 0; i < SPT; i++)
                            h[i] = abar(dak, Ar[i], Al[i]) * h[i] + gbub(dk, uk, duk, Ar[i], Bv[i]);
                    }
                }
            }
        }
        // pass 2: sub-chunks in reverse
        for (int j = NSUB - 1; j >= 0; j--) {
            const int t1 = c * CK + j * SUB;
            if (t1 >= L) continue;  // uniform over the block
            Step s[SPG];
            float Gq[SPG], dzq[SPG], yq[SPG], rdu[SPG], rgd[SPG], rgda[SPG];
#pragma unroll
            for (int r = 0; r < SPG; r++) {
                const int tq = t1 + r * TPC + q;
                const bool valid = tq < L;
                const size_t idx = (rowb + tq) * E + ec;
                s[r] = load_step(u, dt, dta, db, idx, valid);
                const float gy = valid ? __ldg(dy + idx) : 0.f;
#if HAS_Z
                const float zz = valid ? __ldg(z + idx) : 0.f;
                const float sg = 1.f / (1.f + expf(-zz));
                Gq[r] = gy * zz * sg;
                dzq[r] = gy * sg * (1.f + zz * (1.f - sg));  // d/dz (z σ(z)) · dy
#else
                Gq[r] = gy;
                dzq[r] = 0.f;
#endif
                yq[r] = 0.f; rdu[r] = 0.f; rgd[r] = 0.f; rgda[r] = 0.f;
            }
            (void)z;
            // recompute the SUB steps: states after each step and Ā
            float h0[SPT], hh[SUB][SPT], ab[SUB][SPT];
#pragma unroll
            for (int i = 0; i < SPT; i++) h0[i] = sCk[j][i][tid];
#pragma unroll
            for (int k = 0; k < SUB; k++) {
                const int r = k / TPC, kk = k % TPC;
                const float uk = FROM(s[r].u, kk), dk = FROM(s[r].d, kk); const float duk = dk * uk; (void)duk;
#if HAS_DTA
                const float dak = FROM(s[r].da, kk);
#else
                const float dak = dk;
#endif
                float Bv[SPT];
#if BC_FIXED
#pragma unroll
                for (int i = 0; i < SPT; i++) Bv[i] = Bf[i];
#else
                load_bc(Bm, b, t1 + k, L, G, g, n0, Bv);
#endif
#pragma unroll
                for (int i = 0; i < SPT; i++) {
                    const float a = abar(dak, Ar[i], Al[i]);
                    ab[k][i] = a;
                    hh[k][i] = a * (k == 0 ? h0[i] : hh[k - 1][i]) + gbub(dk, uk, duk, Ar[i], Bv[i]);
                }
#if HAS_Z
                {
                    float Cv[SPT];
#if BC_FIXED
#pragma unroll
                    for (int i = 0; i < SPT; i++) Cv[i] = Cf[i];
#else
                    load_bc(Cm, b, t1 + k, L, G, g, n0, Cv);
#endif
                    float acc = 0.f;
#pragma unroll
                    for (int i = 0; i < SPT; i++) acc += Cv[i] * hh[k][i];
                    acc = sum_tpc(acc);
                    if (q == kk) yq[r] = acc;
                }
#endif
            }
            // walk the SUB steps backward
#pragma unroll
            for (int k = SUB - 1; k >= 0; k--) {
                const int r = k / TPC, kk = k % TPC;
                const int t = t1 + k;
                const float uk = FROM(s[r].u, kk), dk = FROM(s[r].d, kk); const float duk = dk * uk; (void)duk;
                const float Gk = FROM(Gq[r], kk);
#if HAS_DTA
                const float dak = FROM(s[r].da, kk);
#else
                const float dak = dk;
#endif
                float Bv[SPT], Cv[SPT];
#if BC_FIXED
#pragma unroll
                for (int i = 0; i < SPT; i++) { Bv[i] = Bf[i]; Cv[i] = Cf[i]; }
#else
                load_bc(Bm, b, t, L, G, g, n0, Bv);
                load_bc(Cm, b, t, L, G, g, n0, Cv);
#endif
                float gdu = 0.f, gd = 0.f, gda = 0.f;
                float v[VP];
#pragma unroll
                for (int i = 0; i < VP; i++) v[i] = 0.f;
#pragma unroll
                for (int i = 0; i < SPT; i++) {
                    const float lam = Gk * Cv[i] + m[i];
                    const float prev = k == 0 ? h0[i] : hh[k - 1][i];
                    float gb, gbd, gba;
                    gbar_grad(dk, Ar[i], gb, gbd, gba);
                    const float dx = lam * prev * dabar(ab[k][i], dak * Ar[i]);  // ∂L/∂x
                    const float dgb = lam * Bv[i] * uk;                          // ∂L/∂γ̄
                    gda += dx * Ar[i];
                    gA[i] += dx * dak + dgb * gba;
                    gd += dgb * gbd;
                    gdu += lam * gb * Bv[i];
                    const float vb = lam * gb * uk;
                    const float vc = Gk * hh[k][i];
#if BC_FIXED
                    gBf[i] += vb;
                    gCf[i] += vc;
#else
                    v[i] = act ? vb : 0.f;
                    v[SPT + i] = act ? vc : 0.f;
#endif
                    m[i] = ab[k][i] * lam;
                }
                gdu = sum_tpc(gdu);
#if HAS_DTA
                gd = sum_tpc(gd);
                gda = sum_tpc(gda);
#else
                gd = sum_tpc(gd + gda);  // ∂/∂Δ through γ̄ and through Ā
                gda = 0.f;
#endif
                if (q == kk) { rdu[r] = gdu; rgd[r] = gd; rgda[r] = gda; }
                (void)v;
#if !BC_FIXED
                // reduce-scatter over the SEGL channels of a segment in a fixed butterfly order
                {
                    int len = VP;
#pragma unroll
                    for (int o = SEGL / 2; o >= 1; o >>= 1) {
                        const int half = len / 2;
                        const bool up = (cl & o) != 0;
#pragma unroll
                        for (int i = 0; i < VP / 2; i++) {
                            if (i < half) {
                                const float send = up ? v[i] : v[i + half];
                                const float keep = up ? v[i + half] : v[i];
                                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o * TPC);
                            }
                        }
                        len = half;
                    }
                }
#if XWARP
#pragma unroll
                for (int i = 0; i < PER; i++) sR[warp][k][lane * PER + i] = v[i];
#else
                {
                    const int nseg = E / SEGC;
                    const int seg = ec / SEGC;
                    if (act && t < L) {
#pragma unroll
                        for (int i = 0; i < PER; i++) {
                            const int vi = (cl % SEGL) * PER + i;
                            if (vi < V2) {
                                const int col = vi < SPT ? n0 + vi : NSTATE + n0 + vi - SPT;
                                pBC[(((size_t)b * nseg + seg) * L + t) * (2 * NSTATE) + col] = v[i];
                            }
                        }
                    }
                }
#endif
#endif
            }
            // outputs of this thread's steps
#pragma unroll
            for (int r = 0; r < SPG; r++) {
                const int tq = t1 + r * TPC + q;
                float draw = rgd[r];
#if !HAS_DTA
                draw += rgda[r];
#endif
#if SOFTPLUS
                draw *= s[r].raw > 20.f ? 1.f : sigmoid_f(s[r].raw);
#endif
                if (tq < L) {
                    gD += Gq[r] * s[r].u;
                    gDB += draw;
                }
                if (act && tq < L) {
                    const size_t idx = (rowb + tq) * E + e;
                    du[idx] = rdu[r] + Dd * Gq[r];
                    ddt[idx] = draw;
#if HAS_DTA
                    ddta[idx] = rgda[r];
#else
                    (void)ddta;
#endif
#if HAS_Z
                    dz[idx] = dzq[r] * (yq[r] + Dd * s[r].u);
#else
                    (void)dz; (void)dzq; (void)yq;
#endif
                }
            }
#if !BC_FIXED && XWARP
            // sum the warps of each segment in order; one output per (segment, step, slot)
            __syncthreads();
            {
                constexpr int WPS = SEGC / CPW;  // warps per segment
                constexpr int NSB = NWARP / WPS;  // segments per block
                const int nseg = E / SEGC;
                for (int o = tid; o < NSB * SUB * 32 * PER; o += NT) {
                    const int slot = o % (32 * PER);
                    const int k = (o / (32 * PER)) % SUB;
                    const int sb = o / (32 * PER * SUB);
                    const int seg = blockIdx.x * NSB + sb;
                    const int t = t1 + k;
                    const int ln = slot / PER, i = slot % PER;
                    const int vi = (ln / TPC) * PER + i;
                    if (seg < nseg && t < L && vi < V2) {
                        float acc = 0.f;
#pragma unroll
                        for (int w = 0; w < WPS; w++) acc += sR[sb * WPS + w][k][slot];
                        const int n0l = (ln % TPC) * SPT;
                        const int col = vi < SPT ? n0l + vi : NSTATE + n0l + vi - SPT;
                        pBC[(((size_t)b * nseg + seg) * L + t) * (2 * NSTATE) + col] = acc;
                    }
                }
            }
            __syncthreads();
#endif
        }
        // (sCk is private to each thread: no barrier before the next chunk)
    }
    // per-(b, e) sums over time
    gD = sum_tpc(gD);
    gDB = sum_tpc(gDB);
    if (act) {
        const int NE = 3 * NSTATE + 2;
        float* p = pE + ((size_t)b * E + e) * NE;
#pragma unroll
        for (int i = 0; i < SPT; i++) {
            p[n0 + i] = gA[i];
#if BC_FIXED
            p[NSTATE + n0 + i] = gBf[i];
            p[2 * NSTATE + n0 + i] = gCf[i];
#else
            p[NSTATE + n0 + i] = 0.f;
            p[2 * NSTATE + n0 + i] = 0.f;
#endif
        }
        if (q == 0) {
            p[3 * NSTATE] = gD;
            p[3 * NSTATE + 1] = gDB;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dB, dC (time-varying) = Σ over the channel segments of each group, in segment order.
// pBC (Bsz, nseg, L, 2N) -> dB, dC (Bsz, L, G, N).  One thread per output pair element.
extern "C" __global__ void ss_reduce_bc(const float* __restrict__ pBC, float* __restrict__ dB,
                                        float* __restrict__ dC, int Bsz, int L, int G,
                                        int nseg) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t total = (size_t)Bsz * L * G * NSTATE;
    if (i >= total) return;
    const int n = i % NSTATE;
    const int g = (i / NSTATE) % G;
    const int t = (i / ((size_t)NSTATE * G)) % L;
    const int b = i / ((size_t)NSTATE * G * L);
    const int spg = nseg / G;
    float sb = 0.f, sc = 0.f;
    for (int j = 0; j < spg; j++) {
        const size_t o = (((size_t)b * nseg + g * spg + j) * L + t) * (2 * NSTATE);
        sb += pBC[o + n];
        sc += pBC[o + NSTATE + n];
    }
    dB[i] = sb;
    dC[i] = sc;
}

// Per-channel parameter gradients = Σ_b pE[b, e, q] in batch order.
// pE (Bsz, E, 3N + 2) -> out (E, 3N + 2)
extern "C" __global__ void ss_reduce_e(const float* __restrict__ pE, float* __restrict__ out,
                                       int Bsz, int E) {
    const int NE = 3 * NSTATE + 2;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)E * NE) return;
    float acc = 0.f;
    for (int b = 0; b < Bsz; b++) acc += pE[(size_t)b * E * NE + i];
    out[i] = acc;
}
