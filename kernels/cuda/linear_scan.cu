// Diagonal linear recurrence over (batch, L, N) tensors (lrnnx-train's scan.rs on the GPU):
//
//   h_t = a_t * h_{t-1} + u_t                       (h_{-1} = 0)
//   lam_t = g_t + conj(a_{t+1}) * lam_{t+1}         (lam_{L-1} = g_{L-1}; reverse scan)
//   du_t = lam_t,   da_t = lam_t * conj(h_{t-1})    (da_0 = 0)
//
// COMPLEX = 1: every value is an interleaved (re, im) pair. SHARED = 1: `a` is one row of N
// values used at every (b, t), and its gradient is summed over t per batch row into
// da (batch, N) (the caller sums over the batch).
//
// Two schedules. ls_fwd / ls_bwd: one thread per (batch row, state n), walking the sequence in
// order (forward) or in reverse (backward); consecutive threads own consecutive n, so every load
// and store is coalesced; the reference, and the baseline of the bench.
// lp_fwd / lp_bwd (parallel in time; below): see there.

#ifndef COMPLEX
#define COMPLEX 0
#endif
#ifndef SHARED
#define SHARED 0
#endif

#if COMPLEX
#define W 2
#else
#define W 1
#endif

extern "C" __global__ void ls_fwd(const float* __restrict__ a, const float* __restrict__ u,
                                  float* __restrict__ h, int batch, int len, int n) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * n) return;
    int b = idx / n, k = idx % n;
    size_t row = (size_t)n * W;
    size_t base = (size_t)b * len * row + (size_t)k * W;
#if SHARED
    const float ar = a[k * W];
#if COMPLEX
    const float ai = a[k * W + 1];
#endif
#endif
    float hr = 0.f;
#if COMPLEX
    float hi = 0.f;
#endif
    for (int t = 0; t < len; ++t) {
        size_t o = base + (size_t)t * row;
#if !SHARED
        float ar = a[o];
#if COMPLEX
        float ai = a[o + 1];
#endif
#endif
#if COMPLEX
        float nr = ar * hr - ai * hi + u[o];
        float ni = ar * hi + ai * hr + u[o + 1];
        hr = nr;
        hi = ni;
        h[o] = hr;
        h[o + 1] = hi;
#else
        hr = ar * hr + u[o];
        h[o] = hr;
#endif
    }
}

extern "C" __global__ void ls_bwd(const float* __restrict__ a, const float* __restrict__ h,
                                  const float* __restrict__ g, float* __restrict__ du,
                                  float* __restrict__ da, int batch, int len, int n) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * n) return;
    int b = idx / n, k = idx % n;
    size_t row = (size_t)n * W;
    size_t base = (size_t)b * len * row + (size_t)k * W;
#if SHARED
    const float ar = a[k * W];
#if COMPLEX
    const float ai = a[k * W + 1];
#endif
    float sr = 0.f;
#if COMPLEX
    float si = 0.f;
#endif
#endif
    // carry = conj(a_{t+1}) * lam_{t+1}
    float cr = 0.f;
#if COMPLEX
    float ci = 0.f;
#endif
    for (int t = len - 1; t >= 0; --t) {
        size_t o = base + (size_t)t * row;
        float lr = g[o] + cr;
#if COMPLEX
        float li = g[o + 1] + ci;
#endif
        du[o] = lr;
#if COMPLEX
        du[o + 1] = li;
#endif
        float pr = 0.f;
#if COMPLEX
        float pi = 0.f;
#endif
        if (t > 0) {
            pr = h[o - row];
#if COMPLEX
            pi = h[o - row + 1];
#endif
        }
        // lam * conj(h_{t-1})
#if COMPLEX
        float gr = lr * pr + li * pi;
        float gi = li * pr - lr * pi;
#else
        float gr = lr * pr;
#endif
#if SHARED
        sr += gr;
#if COMPLEX
        si += gi;
#endif
#else
        da[o] = gr;
#if COMPLEX
        da[o + 1] = gi;
#endif
        float ar = a[o];
#if COMPLEX
        float ai = a[o + 1];
#endif
#endif
        // conj(a_t) * lam_t for step t - 1
#if COMPLEX
        cr = ar * lr + ai * li;
        ci = ar * li - ai * lr;
#else
        cr = ar * lr;
#endif
    }
#if SHARED
    da[(size_t)b * row + (size_t)k * W] = sr;
#if COMPLEX
    da[(size_t)b * row + (size_t)k * W + 1] = si;
#endif
#endif
}

// ---------------------------------------------------------------------------------------------
// Parallel in time. A block owns 32 consecutive states (one per lane) of one batch row and one
// segment of the sequence (grid: (⌈N/32⌉, batch, segments)); its PW warps (8, or 16 where the
// blocks are few but need no segments; registers for 16 warps an SM) own consecutive runs
// of PK steps of each chunk of PW·PK steps. Per chunk, every lane loads its PK steps into
// registers (each step one coalesced row of 32 states), composes them into one affine map
// h ↦ P·h + S, publishes the map in shared memory, folds the maps of the warps before it onto the
// carried state, and re-walks its steps from there; the last warp carries the chunk's end state
// to the next chunk (double-buffered, one barrier a chunk). The backward does the same in
// reverse time for λ_t = conj(a_{t+1})·λ_{t+1} + g_t.
// With several segments (short batch·N, long L) pass 0 composes each segment into one map
// (ps: (batch, segments, N) maps, 2 values each; the last segment's (first's, in the backward)
// is not needed and not computed), and pass 1 starts each segment from the fold of the maps of
// the segments before it (after it, in the backward). Deterministic: fixed orders
// throughout (the shared-a gradient: per thread in step order, the warps of a block in warp
// order, segments in order by lp_reduce_da).

#ifndef PW
#define PW 8
#endif
#ifndef PK
#define PK 8
#endif

struct V {
    float r;
#if COMPLEX
    float i;
#endif
};

__device__ __forceinline__ V v_zero() {
    V x;
    x.r = 0.f;
#if COMPLEX
    x.i = 0.f;
#endif
    return x;
}
__device__ __forceinline__ V v_one() {
    V x = v_zero();
    x.r = 1.f;
    return x;
}
// a·h + u
__device__ __forceinline__ V v_fma(V a, V h, V u) {
    V x;
#if COMPLEX
    x.r = fmaf(a.r, h.r, fmaf(-a.i, h.i, u.r));
    x.i = fmaf(a.r, h.i, fmaf(a.i, h.r, u.i));
#else
    x.r = fmaf(a.r, h.r, u.r);
#endif
    return x;
}
__device__ __forceinline__ V v_mul(V a, V b) { return v_fma(a, b, v_zero()); }
__device__ __forceinline__ V v_conj(V a) {
#if COMPLEX
    a.i = -a.i;
#endif
    return a;
}
__device__ __forceinline__ V v_add(V a, V b) {
    a.r += b.r;
#if COMPLEX
    a.i += b.i;
#endif
    return a;
}
// (4-byte accesses: the caller's buffers may start at any float offset)
__device__ __forceinline__ V v_load(const float* p, size_t o) {
    V x;
    x.r = p[o];
#if COMPLEX
    x.i = p[o + 1];
#endif
    return x;
}
__device__ __forceinline__ void v_store(float* p, size_t o, V x) {
    p[o] = x.r;
#if COMPLEX
    p[o + 1] = x.i;
#endif
}

// The PK inputs of warp-run steps ts.. of the forward: a_t (the fixed row when shared; 1 past
// the segment) and u_t (0 past it).
__device__ __forceinline__ void lp_fwd_load(const float* __restrict__ a,
                                            const float* __restrict__ u, V a_fixed, bool on,
                                            int ts, int t_end, size_t base, size_t row,
                                            V (&av)[PK], V (&uv)[PK]) {
    (void)a; (void)a_fixed;
#pragma unroll
    for (int i = 0; i < PK; ++i) {
        const int t = ts + i;
        const bool ok = on && t < t_end;
        const size_t o = base + (size_t)t * row;
#if SHARED
        av[i] = ok ? a_fixed : v_one();
#else
        av[i] = ok ? v_load(a, o) : v_one();
#endif
        uv[i] = ok ? v_load(u, o) : v_zero();
    }
}

// Forward. pass 0: the segment's map into ps (only with several segments); pass 1: h. Each
// chunk's inputs are loaded one chunk ahead (registers, double-buffered), so the loads of the
// next chunk are in flight across this chunk's barrier, fold and stores.
extern "C" __global__ void __launch_bounds__(PW * 32, 16 / PW)
lp_fwd(const float* __restrict__ a, const float* __restrict__ u, float* __restrict__ h,
       float* __restrict__ ps, int batch, int len, int n, int seg_len, int pass, int segs) {
    __shared__ V map_p[2][PW][32];
    __shared__ V map_s[2][PW][32];
    __shared__ V carry[2][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    // pass 0 runs the segments but the last (whose map no segment needs), pass 1 all of them
    const int k = blockIdx.x * 32 + lane, b = blockIdx.y, seg = blockIdx.z;
    const bool on = k < n;
    const size_t row = (size_t)n * W, base = (size_t)b * len * row + (size_t)k * W;
    const int t_begin = seg * seg_len, t_end = min(len, t_begin + seg_len);
#if SHARED
    const V a_fixed = on ? v_load(a, (size_t)k * W) : v_one();
#else
    const V a_fixed = v_one();
#endif
    // the state entering the segment: the fold of the maps of the segments before it
    V h_in = v_zero();
    if (pass == 1 && on) {
        for (int j = 0; j < seg; ++j) {
            size_t o = (((size_t)b * segs + j) * n + k) * 2 * W;
            h_in = v_fma(v_load(ps, o), h_in, v_load(ps, o + W));
        }
    }
    if (w == 0) carry[0][lane] = h_in;
    V p_seg = v_one();  // the last warp's running product over the segment (pass 0)
    V av[PK], uv[PK], an[PK], un[PK];
    lp_fwd_load(a, u, a_fixed, on, t_begin + w * PK, t_end, base, row, av, uv);
    __syncthreads();
    int c = 0;
    for (int t0 = t_begin; t0 < t_end; t0 += PW * PK, ++c) {
        const int ts = t0 + w * PK;
        if (t0 + PW * PK < t_end)
            lp_fwd_load(a, u, a_fixed, on, ts + PW * PK, t_end, base, row, an, un);
        V P = v_one(), S = v_zero();
#pragma unroll
        for (int i = 0; i < PK; ++i) {
            P = v_mul(av[i], P);
            S = v_fma(av[i], S, uv[i]);
        }
        map_p[c & 1][w][lane] = P;
        map_s[c & 1][w][lane] = S;
        __syncthreads();
        V x = carry[c & 1][lane];
        for (int j = 0; j < w; ++j) x = v_fma(map_p[c & 1][j][lane], x, map_s[c & 1][j][lane]);
        if (pass == 1) {
            V y = x;
#pragma unroll
            for (int i = 0; i < PK; ++i) {
                y = v_fma(av[i], y, uv[i]);
                if (on && ts + i < t_end) v_store(h, base + (size_t)(ts + i) * row, y);
            }
        }
        if (w == PW - 1) {
            carry[(c + 1) & 1][lane] = v_fma(P, x, S);
            if (pass == 0) {
                for (int j = 0; j < PW; ++j) p_seg = v_mul(map_p[c & 1][j][lane], p_seg);
            }
        }
#pragma unroll
        for (int i = 0; i < PK; ++i) {
            av[i] = an[i];
            uv[i] = un[i];
        }
    }
    if (pass == 0 && w == PW - 1 && on) {
        size_t o = (((size_t)b * segs + seg) * n + k) * 2 * W;
        v_store(ps, o, p_seg);
        // the segment's map applied to 0; c chunks done, the last carry is in carry[c & 1]
        v_store(ps, o + W, carry[c & 1][lane]);
    }
}

// The PK inputs of warp-run steps ts.. of the backward: conj(a_{t+1}) (0 at t = L − 1; 1 past
// the segment), g_t (0 past it) and, in pass 1, conj(h_{t−1}) (0 at t = 0).
__device__ __forceinline__ void lp_bwd_load(const float* __restrict__ a,
                                            const float* __restrict__ h,
                                            const float* __restrict__ g, V a_conj, bool on,
                                            bool with_h, int ts, int t_end, int len,
                                            size_t base, size_t row, V (&bv)[PK], V (&gv)[PK],
                                            V (&hv)[PK]) {
    (void)a; (void)a_conj;
#pragma unroll
    for (int i = 0; i < PK; ++i) {
        const int t = ts + i;
        const bool ok = on && t < t_end;
        const size_t o = base + (size_t)t * row;
#if SHARED
        bv[i] = ok ? a_conj : v_one();
#else
        bv[i] = ok ? (t + 1 < len ? v_conj(v_load(a, o + row)) : v_zero()) : v_one();
#endif
        gv[i] = ok ? v_load(g, o) : v_zero();
        hv[i] = with_h && ok && t > 0 ? v_conj(v_load(h, o - row)) : v_zero();
    }
}

// Backward: λ_t = conj(a_{t+1})·λ_{t+1} + g_t (λ_L = 0), du_t = λ_t, da_t = λ_t·conj(h_{t−1}).
// pass 0: the segment's map of λ (from the λ after it) into ps; pass 1: du, da (shared a: the
// block's sums over its steps into pda (batch, segments, N), summed by lp_reduce_da). Inputs
// loaded one chunk ahead, as in the forward.
extern "C" __global__ void __launch_bounds__(PW * 32, 16 / PW)
lp_bwd(const float* __restrict__ a, const float* __restrict__ h, const float* __restrict__ g,
       float* __restrict__ du, float* __restrict__ da, float* __restrict__ ps,
       float* __restrict__ pda, int batch, int len, int n, int seg_len, int pass, int segs) {
    __shared__ V map_p[2][PW][32];
    __shared__ V map_s[2][PW][32];
    __shared__ V carry[2][32];
#if SHARED
    __shared__ V red[PW][32];
#endif
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    // pass 0 runs the segments but the first (whose map no segment needs), pass 1 all of them
    const int k = blockIdx.x * 32 + lane, b = blockIdx.y, seg = blockIdx.z + (pass == 0 ? 1 : 0);
    const bool on = k < n;
    const size_t row = (size_t)n * W, base = (size_t)b * len * row + (size_t)k * W;
    const int t_begin = seg * seg_len, t_end = min(len, t_begin + seg_len);
#if SHARED
    const V a_conj = on ? v_conj(v_load(a, (size_t)k * W)) : v_one();
    V da_sum = v_zero();
#else
    const V a_conj = v_one();
#endif
    // λ entering the segment from its end: the fold of the maps of the segments after it
    V l_in = v_zero();
    if (pass == 1 && on) {
        for (int j = segs - 1; j > seg; --j) {
            size_t o = (((size_t)b * segs + j) * n + k) * 2 * W;
            l_in = v_fma(v_load(ps, o), l_in, v_load(ps, o + W));
        }
    }
    if (w == 0) carry[0][lane] = l_in;
    V p_seg = v_one();  // warp 0's running product over the segment (pass 0)
    const int chunks = (t_end - t_begin + PW * PK - 1) / (PW * PK);
    const bool with_h = pass == 1;
    V bv[PK], gv[PK], hv[PK], bn[PK], gn[PK], hn[PK];
    lp_bwd_load(a, h, g, a_conj, on, with_h, t_begin + (chunks - 1) * PW * PK + w * PK, t_end,
                len, base, row, bv, gv, hv);
    __syncthreads();
    int c = 0;
    for (int cc = chunks - 1; cc >= 0; --cc, ++c) {
        const int ts = t_begin + cc * PW * PK + w * PK;
        if (cc > 0)
            lp_bwd_load(a, h, g, a_conj, on, with_h, ts - PW * PK, t_end, len, base, row, bn, gn,
                        hn);
        V P = v_one(), S = v_zero();
#pragma unroll
        for (int i = PK - 1; i >= 0; --i) {
            P = v_mul(bv[i], P);
            S = v_fma(bv[i], S, gv[i]);
        }
        map_p[c & 1][w][lane] = P;
        map_s[c & 1][w][lane] = S;
        __syncthreads();
        V x = carry[c & 1][lane];
        for (int j = PW - 1; j > w; --j) x = v_fma(map_p[c & 1][j][lane], x, map_s[c & 1][j][lane]);
        if (pass == 1) {
            V lam = x;
#pragma unroll
            for (int i = PK - 1; i >= 0; --i) {
                const int t = ts + i;
                lam = v_fma(bv[i], lam, gv[i]);
                if (on && t < t_end) {
                    const size_t o = base + (size_t)t * row;
                    v_store(du, o, lam);
#if SHARED
                    da_sum = v_fma(lam, hv[i], da_sum);
#else
                    v_store(da, o, v_mul(lam, hv[i]));
#endif
                }
            }
        }
        if (w == 0) {
            carry[(c + 1) & 1][lane] = v_fma(P, x, S);
            if (pass == 0) {
                for (int j = PW - 1; j >= 0; --j) p_seg = v_mul(map_p[c & 1][j][lane], p_seg);
            }
        }
#pragma unroll
        for (int i = 0; i < PK; ++i) {
            bv[i] = bn[i];
            gv[i] = gn[i];
            hv[i] = hn[i];
        }
    }
    if (pass == 0 && w == 0 && on) {
        size_t o = (((size_t)b * segs + seg) * n + k) * 2 * W;
        v_store(ps, o, p_seg);
        v_store(ps, o + W, carry[c & 1][lane]);
    }
#if SHARED
    if (pass == 1) {
        red[w][lane] = da_sum;
        __syncthreads();
        if (w == 0 && on) {
            V sum = red[0][lane];
            for (int j = 1; j < PW; ++j) sum = v_add(sum, red[j][lane]);
            v_store(pda, (((size_t)b * segs + seg) * n + k) * W, sum);
        }
    }
#endif
}

// Shared a: da (batch, N) = the per-segment sums (batch, segments, N) (in ps) summed in order.
extern "C" __global__ void lp_reduce_da(const float* __restrict__ pda, float* __restrict__ da,
                                        int batch, int n, int segs) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= batch * n) return;
    int b = idx / n, k = idx % n;
    V sum = v_zero();
    for (int s = 0; s < segs; ++s) sum = v_add(sum, v_load(pda, (((size_t)b * segs + s) * n + k) * W));
    v_store(da, (size_t)idx * W, sum);
}
