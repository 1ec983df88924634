// Per-channel causal convolution of (batch, C, L) signals with (C, K) kernels, and both of its
// gradients (lrnnx-train's fftconv op on the GPU), as direct sums:
//
//   cc_fwd:  y[b,c,t]  = sum_{s <= t, s < K}      k[c,s] * u[b,c,t-s]
//   cc_dx:   du[b,c,s] = sum_{j < K, s+j < L}     k[c,j] * g[b,c,s+j]      (correlation with k)
//   cc_dk:   dk[c,j]   = sum_b sum_{j <= t < L}   g[b,c,t] * u[b,c,t-j]    (j < K; 0 for j >= L)
//
// Tiling: a block of TILE threads owns TILE consecutive outputs of one row (cc_fwd, cc_dx: one
// (b, c) signal; cc_dk: one channel c and TILE lags). The sum runs over chunks of CHUNK terms;
// each chunk's operands are staged in shared memory (the CHUNK kernel taps and the TILE+CHUNK-1
// signal values the tile reads, zero outside [0, L)), every thread sums its CHUNK products in
// order into a chunk sum and adds the chunk sum to its total (two-level summation). Every
// output is written by one thread in a fixed order: deterministic, no atomics.
//
// Grid: 1-D, blockIdx.x = row * tiles + tile (rows = batch*C for cc_fwd / cc_dx, C for cc_dk).

#ifndef TILE
#define TILE 256
#endif
#ifndef CHUNK
#define CHUNK 256
#endif

extern "C" __global__ void cc_fwd(const float* __restrict__ u, const float* __restrict__ k,
                                  float* __restrict__ y, int channels, int len, int taps,
                                  int tiles) {
    __shared__ float ks[CHUNK];
    __shared__ float xs[TILE + CHUNK];
    const int row = blockIdx.x / tiles;  // b * C + c
    const int t0 = (blockIdx.x % tiles) * TILE;
    const int c = row % channels;
    const float* ur = u + (size_t)row * len;
    const float* kr = k + (size_t)c * taps;
    const int t = t0 + threadIdx.x;
    // taps s < min(K, t0 + TILE) reach this tile
    const int s_end = min(taps, t0 + TILE);
    float acc = 0.f;
    for (int s0 = 0; s0 < s_end; s0 += CHUNK) {
        __syncthreads();
        for (int i = threadIdx.x; i < CHUNK; i += TILE) {
            const int s = s0 + i;
            ks[i] = s < taps ? kr[s] : 0.f;
        }
        // xs[i] = u[t0 - s0 - CHUNK + 1 + i]
        const int base = t0 - s0 - CHUNK + 1;
        for (int i = threadIdx.x; i < TILE + CHUNK - 1; i += TILE) {
            const int src = base + i;
            xs[i] = (src >= 0 && src < len) ? ur[src] : 0.f;
        }
        __syncthreads();
        float part = 0.f;
        // u[t - s0 - j] = xs[threadIdx.x - j + CHUNK - 1]
        const float* xp = xs + threadIdx.x + CHUNK - 1;
#pragma unroll 8
        for (int j = 0; j < CHUNK; ++j) part = fmaf(ks[j], xp[-j], part);
        acc += part;
    }
    if (t < len) y[(size_t)row * len + t] = acc;
}

extern "C" __global__ void cc_dx(const float* __restrict__ g, const float* __restrict__ k,
                                 float* __restrict__ du, int channels, int len, int taps,
                                 int tiles) {
    __shared__ float ks[CHUNK];
    __shared__ float xs[TILE + CHUNK];
    const int row = blockIdx.x / tiles;
    const int s0t = (blockIdx.x % tiles) * TILE;
    const int c = row % channels;
    const float* gr = g + (size_t)row * len;
    const float* kr = k + (size_t)c * taps;
    const int s = s0t + threadIdx.x;
    // lags j < min(K, L - s0t) reach this tile
    const int j_end = min(taps, len - s0t);
    float acc = 0.f;
    for (int j0 = 0; j0 < j_end; j0 += CHUNK) {
        __syncthreads();
        for (int i = threadIdx.x; i < CHUNK; i += TILE) {
            const int j = j0 + i;
            ks[i] = j < taps ? kr[j] : 0.f;
        }
        // xs[i] = g[s0t + j0 + i]
        const int base = s0t + j0;
        for (int i = threadIdx.x; i < TILE + CHUNK - 1; i += TILE) {
            const int src = base + i;
            xs[i] = src < len ? gr[src] : 0.f;
        }
        __syncthreads();
        float part = 0.f;
        // g[s + j0 + j] = xs[threadIdx.x + j]
        const float* xp = xs + threadIdx.x;
#pragma unroll 8
        for (int j = 0; j < CHUNK; ++j) part = fmaf(ks[j], xp[j], part);
        acc += part;
    }
    if (s < len) du[(size_t)row * len + s] = acc;
}

extern "C" __global__ void cc_dk(const float* __restrict__ g, const float* __restrict__ u,
                                 float* __restrict__ dk, int batch, int channels, int len,
                                 int taps, int tiles) {
    __shared__ float gs[CHUNK];
    __shared__ float xs[TILE + CHUNK];
    const int c = blockIdx.x / tiles;
    const int j0 = (blockIdx.x % tiles) * TILE;
    const int j = j0 + threadIdx.x;
    float acc = 0.f;
    for (int b = 0; b < batch; ++b) {
        const size_t off = ((size_t)b * channels + c) * len;
        const float* gr = g + off;
        const float* ur = u + off;
        // terms t >= j0 (smaller t reach no lag of this tile)
        for (int t0 = j0; t0 < len; t0 += CHUNK) {
            __syncthreads();
            for (int i = threadIdx.x; i < CHUNK; i += TILE) {
                const int t = t0 + i;
                gs[i] = t < len ? gr[t] : 0.f;
            }
            // xs[i] = u[t0 - j0 - TILE + 1 + i]
            const int base = t0 - j0 - TILE + 1;
            for (int i = threadIdx.x; i < TILE + CHUNK - 1; i += TILE) {
                const int src = base + i;
                xs[i] = (src >= 0 && src < len) ? ur[src] : 0.f;
            }
            __syncthreads();
            float part = 0.f;
            // u[t0 + i - j] = xs[i - threadIdx.x + TILE - 1]
            const float* xp = xs + TILE - 1 - threadIdx.x;
#pragma unroll 8
            for (int i = 0; i < CHUNK; ++i) part = fmaf(gs[i], xp[i], part);
            acc += part;
        }
    }
    if (j < taps) dk[(size_t)c * taps + j] = j < len ? acc : 0.f;
}
