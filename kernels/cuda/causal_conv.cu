// Per-channel causal convolution of (batch, C, L) signals with (C, K) kernels, and both of its
// gradients (lrnnx-train's fftconv op on the GPU), as direct sums:
//
//   cc_fwd:  y[b,c,t]  = sum_{s <= t, s < K}      k[c,s] * u[b,c,t-s]
//   cc_dx:   du[b,c,s] = sum_{j < K, s+j < L}     k[c,j] * g[b,c,s+j]      (correlation with k)
//   cc_dk:   dk[c,j]   = sum_b sum_{j <= t < L}   g[b,c,t] * u[b,c,t-j]    (j < K; 0 for j >= L)
//            (the batch in groups of consecutive rows where the channels give too few blocks,
//            the groups' sums added in order by cc_dk_reduce)
//
// Tiling: a block of TILE threads owns OT = TILE*RPT consecutive outputs of one row (cc_fwd,
// cc_dx: one (b, c) signal; cc_dk: one channel c and OT lags), RPT consecutive ones a thread.
// The sum runs over chunks of CHUNK terms; each chunk's operands are staged in shared memory
// (the CHUNK kernel taps, or gradient values for cc_dk, and the OT+CHUNK signal values the tile
// reads, zero outside [0, L)). A thread's RPT outputs read RPT consecutive signal values at
// every term, the window sliding by one value a term: the window lives in registers, so a term
// costs RPT FMAs, one shared load of the window's new value and a quarter of a (broadcast)
// 16-byte tap load, instead of two shared loads an FMA at one output a thread. The signal tile
// is stored skewed (value p at p + p/RPT) so that lanes RPT values apart hit distinct banks.
// Every thread sums its CHUNK products per output in order into a chunk sum and adds the chunk
// sum to the output's total (two-level summation); every output is written by one thread in a
// fixed order: deterministic, no atomics, and the same sums in the same order for every RPT.
//
// Grid: 1-D, blockIdx.x = row * tiles + tile (rows = batch*C for cc_fwd / cc_dx, groups*C for
// cc_dk).

#ifndef TILE
#define TILE 256
#endif
#ifndef CHUNK
#define CHUNK 256
#endif
#ifndef RPT
#define RPT 8
#endif
#if CHUNK % RPT != 0 || CHUNK % 4 != 0 || (RPT & (RPT - 1)) != 0
#error "CHUNK must be a multiple of RPT and of 4, RPT a power of two"
#endif

#define OT (TILE * RPT)
// position of signal value p (≥ 0) in the skewed tile
__device__ __forceinline__ int sk(int p) {
#if RPT > 1
    return p + (int)((unsigned)p / RPT);
#else
    return p;
#endif
}
#define XS (XPAD + OT + CHUNK + (OT + CHUNK) / RPT + 1)

// The chunk's taps (or gradient values) src[0..n) at s0.. into sh[0..CHUNK), zeros past n.
__device__ __forceinline__ void cc_stage_taps(float* sh, const float* __restrict__ src, int s0,
                                              int n) {
    for (int i = threadIdx.x; i < CHUNK; i += TILE) sh[i] = s0 + i < n ? src[s0 + i] : 0.f;
}
// Signal values x[base + i] for i < OT + CHUNK into the skewed tile, zeros outside [0, len).
__device__ __forceinline__ void cc_stage_signal(float* xs, const float* __restrict__ x, int base,
                                                int len) {
    for (int i = threadIdx.x; i < OT + CHUNK; i += TILE) {
        const int src = base + i;
        xs[sk(i)] = (src >= 0 && src < len) ? x[src] : 0.f;
    }
}
// RPT staged taps ks[j..j+RPT) (j a multiple of RPT; 16-byte loads when RPT % 4 == 0)
__device__ __forceinline__ void cc_taps(const float* ks, int j, float (&kv)[RPT]) {
#if RPT % 4 == 0
#pragma unroll
    for (int q = 0; q < RPT; q += 4) {
        const float4 v = *reinterpret_cast<const float4*>(ks + j + q);
        kv[q] = v.x; kv[q + 1] = v.y; kv[q + 2] = v.z; kv[q + 3] = v.w;
    }
#else
#pragma unroll
    for (int q = 0; q < RPT; ++q) kv[q] = ks[j + q];
#endif
}
// The window's new values in a group of RPT terms sit at fixed offsets from one pointer (the
// skew adds one position every RPT values), so the group needs no index arithmetic: see the
// three kernels. XPAD positions before the tile keep the forward's unused last read in bounds.
#define XPAD 4

extern "C" __global__ void __launch_bounds__(TILE)
cc_fwd(const float* __restrict__ u, const float* __restrict__ k, float* __restrict__ y,
       int channels, int len, int taps, int tiles) {
    __shared__ __align__(16) float ks[CHUNK];
    __shared__ float xs_[XS];
    float* xs = xs_ + XPAD;
    const int row = blockIdx.x / tiles;  // b * C + c
    const int t0 = (blockIdx.x % tiles) * OT;
    const int c = row % channels;
    const float* ur = u + (size_t)row * len;
    const float* kr = k + (size_t)c * taps;
    // taps s < min(K, t0 + OT) reach this tile
    const int s_end = min(taps, t0 + OT);
    // xs holds u[t0 - s0 - CHUNK + 1 + i]; output t0 + RPT·tid + r reads, at tap s0 + j,
    // xs[b + r - j] with b = RPT·tid + CHUNK - 1
    const int b = RPT * threadIdx.x + CHUNK - 1;
    float acc[RPT];
#pragma unroll
    for (int r = 0; r < RPT; ++r) acc[r] = 0.f;
    for (int s0 = 0; s0 < s_end; s0 += CHUNK) {
        __syncthreads();
        cc_stage_taps(ks, kr, s0, taps);
        cc_stage_signal(xs, ur, t0 - s0 - CHUNK + 1, len);
        __syncthreads();
        float part[RPT], win[RPT];
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            part[r] = 0.f;
            win[r] = xs[sk(b + r)];
        }
        for (int j = 0; j < CHUNK; j += RPT) {
            float kv[RPT];
            cc_taps(ks, j, kv);
            // the new values xs[b - j - 1 - q], b - j - 1 = RPT·m - 2: skewed, (RPT+1)·m - 3 - q,
            // one less at q = RPT - 1 (the last, at the chunk's end, unused and in the pad)
            const int m = threadIdx.x + (CHUNK - j) / RPT;
            const float* xp = xs + (RPT + 1) * m - 3;
#pragma unroll
            for (int q = 0; q < RPT; ++q) {
#pragma unroll
                for (int r = 0; r < RPT; ++r) part[r] = fmaf(kv[q], win[r], part[r]);
#pragma unroll
                for (int r = RPT - 1; r > 0; --r) win[r] = win[r - 1];
#if RPT > 1
                win[0] = q < RPT - 1 ? xp[-q] : xp[-q - 1];
#else
                win[0] = xs[b - j - 1];
#endif
            }
        }
#pragma unroll
        for (int r = 0; r < RPT; ++r) acc[r] += part[r];
    }
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
        const int t = t0 + RPT * threadIdx.x + r;
        if (t < len) y[(size_t)row * len + t] = acc[r];
    }
}

extern "C" __global__ void __launch_bounds__(TILE)
cc_dx(const float* __restrict__ g, const float* __restrict__ k, float* __restrict__ du,
      int channels, int len, int taps, int tiles) {
    __shared__ __align__(16) float ks[CHUNK];
    __shared__ float xs[XS];
    const int row = blockIdx.x / tiles;
    const int s0t = (blockIdx.x % tiles) * OT;
    const int c = row % channels;
    const float* gr = g + (size_t)row * len;
    const float* kr = k + (size_t)c * taps;
    // lags j < min(K, L - s0t) reach this tile
    const int j_end = min(taps, len - s0t);
    // xs holds g[s0t + j0 + i]; output s0t + RPT·tid + r reads, at lag j0 + j, xs[b + r + j]
    const int b = RPT * threadIdx.x;
    float acc[RPT];
#pragma unroll
    for (int r = 0; r < RPT; ++r) acc[r] = 0.f;
    for (int j0 = 0; j0 < j_end; j0 += CHUNK) {
        __syncthreads();
        cc_stage_taps(ks, kr, j0, taps);
        cc_stage_signal(xs, gr, s0t + j0, len);
        __syncthreads();
        float part[RPT], win[RPT];
#pragma unroll
        for (int r = 0; r < RPT; ++r) {
            part[r] = 0.f;
            win[r] = xs[sk(b + r)];
        }
        for (int j = 0; j < CHUNK; j += RPT) {
            float kv[RPT];
            cc_taps(ks, j, kv);
            // the new values xs[b + RPT + j + q] = xs[RPT·m + q]: skewed, (RPT+1)·m + q
            // (≤ OT + CHUNK - 1: staged)
            const int m = threadIdx.x + 1 + j / RPT;
            const float* xp = xs + (RPT + 1) * m;
#pragma unroll
            for (int q = 0; q < RPT; ++q) {
#pragma unroll
                for (int r = 0; r < RPT; ++r) part[r] = fmaf(kv[q], win[r], part[r]);
#pragma unroll
                for (int r = 0; r < RPT - 1; ++r) win[r] = win[r + 1];
#if RPT > 1
                win[RPT - 1] = xp[q];
#else
                win[0] = xs[b + 1 + j];
#endif
            }
        }
#pragma unroll
        for (int r = 0; r < RPT; ++r) acc[r] += part[r];
    }
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
        const int s = s0t + RPT * threadIdx.x + r;
        if (s < len) du[(size_t)row * len + s] = acc[r];
    }
}

// cc_dk over batch groups: block (grp, c, tile) sums the batch rows grp·bpg .. (grp+1)·bpg − 1
// into pdk[grp] (C, K); with several groups cc_dk_reduce sums the groups in order into dk.
extern "C" __global__ void __launch_bounds__(TILE)
cc_dk(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ pdk,
      int batch, int channels, int len, int taps, int tiles, int bpg) {
    __shared__ __align__(16) float gs[CHUNK];
    __shared__ float xs[XS];
    const int grp = blockIdx.x / (channels * tiles);
    const int c = (blockIdx.x / tiles) % channels;
    const int j0 = (blockIdx.x % tiles) * OT;
    float* dk = pdk + (size_t)grp * channels * taps;
    const int b_begin = grp * bpg, b_end = min(batch, b_begin + bpg);
    // xs holds u[t0 - j0 - OT + 1 + i]; lag j0 + RPT·tid + r reads, at term t0 + i,
    // xs[b - r + i] with b = OT - 1 - RPT·tid
    const int b = OT - 1 - RPT * threadIdx.x;
    float acc[RPT];
#pragma unroll
    for (int r = 0; r < RPT; ++r) acc[r] = 0.f;
    for (int bb = b_begin; bb < b_end; ++bb) {
        const size_t off = ((size_t)bb * channels + c) * len;
        const float* gr = g + off;
        const float* ur = u + off;
        // terms t >= j0 (smaller t reach no lag of this tile)
        for (int t0 = j0; t0 < len; t0 += CHUNK) {
            __syncthreads();
            cc_stage_taps(gs, gr, t0, len);
            cc_stage_signal(xs, ur, t0 - j0 - OT + 1, len);
            __syncthreads();
            float part[RPT], win[RPT];
#pragma unroll
            for (int r = 0; r < RPT; ++r) {
                part[r] = 0.f;
                win[r] = xs[sk(b - r)];
            }
            for (int i = 0; i < CHUNK; i += RPT) {
                float gv[RPT];
                cc_taps(gs, i, gv);
                // the new values xs[b + i + q + 1] = xs[RPT·m + q]: skewed, (RPT+1)·m + q
                // (≤ OT + CHUNK - 1: staged)
                const int m = TILE - threadIdx.x + i / RPT;
                const float* xp = xs + (RPT + 1) * m;
#pragma unroll
                for (int q = 0; q < RPT; ++q) {
#pragma unroll
                    for (int r = 0; r < RPT; ++r) part[r] = fmaf(gv[q], win[r], part[r]);
#pragma unroll
                    for (int r = RPT - 1; r > 0; --r) win[r] = win[r - 1];
#if RPT > 1
                    win[0] = xp[q];
#else
                    win[0] = xs[b + i + 1];
#endif
                }
            }
#pragma unroll
            for (int r = 0; r < RPT; ++r) acc[r] += part[r];
        }
    }
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
        const int j = j0 + RPT * threadIdx.x + r;
        if (j < taps) dk[(size_t)c * taps + j] = j < len ? acc[r] : 0.f;
    }
}

// dk[i] = Σ_grp pdk[grp][i] over the groups in order (i < n = C·K).
extern "C" __global__ void cc_dk_reduce(const float* __restrict__ pdk, float* __restrict__ dk,
                                        int groups, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float acc = 0.f;
    for (int grp = 0; grp < groups; ++grp) acc += pdk[(size_t)grp * n + i];
    dk[i] = acc;
}
