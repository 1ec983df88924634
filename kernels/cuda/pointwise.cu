// Fused pointwise kernels of lrnnx-train's S4 / S4D blocks and activations
// (kernels/src/pointwise.rs): the exact (erf) GELU applied `depth` times (0, 1 or 2) with an
// optional bias over the last axis, its gradient, and the swap of the axes 1 and 3 of a
// (B, R, M, C) tensor with the same activation applied on the way, and its gradient.
//
//   gelu(x)  = x·(1 + erf(x/√2))/2
//   gelu'(x) = (1 + erf(x/√2))/2 + x·exp(−x²/2)/√(2π)
//   act_0(x) = x, act_1 = gelu, act_2 = gelu∘gelu;   act_2'(x) = gelu'(gelu(x))·gelu'(x)
//
// Every output is written by one thread; no reductions, so the results are deterministic.

__device__ __forceinline__ float gelu_f(float x) {
    return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float gelu_d(float x) {
    return 0.5f * (1.f + erff(x * 0.70710678118654752f)) +
           x * 0.39894228040143268f * expf(-0.5f * x * x);
}

// act_depth(x)
__device__ __forceinline__ float act(float x, int depth) {
    for (int d = 0; d < depth; d++) x = gelu_f(x);
    return x;
}

// act_depth'(x) for depth 1 or 2 (1 for depth 0)
__device__ __forceinline__ float act_d(float x, int depth) {
    if (depth <= 0) return 1.f;
    if (depth == 1) return gelu_d(x);
    return gelu_d(gelu_f(x)) * gelu_d(x);
}

// y[i] = act(x[i] + bias[i mod cols]) (bias only when has_bias), i < n; grid-stride.
extern "C" __global__ void pw_gelu(const float* __restrict__ x, const float* __restrict__ bias,
                                   float* __restrict__ y, long long n, int cols, int has_bias,
                                   int depth) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = x[i];
        if (has_bias) v += bias[i % cols];
        y[i] = act(v, depth);
    }
}

// dx[i] = g[i]·act'(x[i] + bias[i mod cols]), i < n; grid-stride.
extern "C" __global__ void pw_gelu_grad(const float* __restrict__ x,
                                        const float* __restrict__ bias,
                                        const float* __restrict__ g, float* __restrict__ dx,
                                        long long n, int cols, int has_bias, int depth) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = x[i];
        if (has_bias) v += bias[i % cols];
        dx[i] = g[i] * act_d(v, depth);
    }
}

#define SW_TILE 32
#define SW_ROWS 8

// dst[b][c][m][r] = act(src[b][r][m][c]) for src (B, R, M, C), dst (B, C, M, R): a 32 × 32 tile
// of (r, c) per block of 32 × 8 threads through shared memory, so that both the reads (along c)
// and the writes (along r) are coalesced. Grid (⌈C/32⌉, tiles of R, B·M), the last two strided.
extern "C" __global__ void pw_swap(const float* __restrict__ src, float* __restrict__ dst,
                                   long long bm_count, int R, int M, int C, int depth) {
    __shared__ float tile[SW_TILE][SW_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c0 = blockIdx.x * SW_TILE;
    const int r_tiles = (R + SW_TILE - 1) / SW_TILE;
    for (long long bm = blockIdx.z; bm < bm_count; bm += gridDim.z) {
        const long long b = bm / M;
        const int m = (int)(bm - b * M);
        for (int rt = blockIdx.y; rt < r_tiles; rt += gridDim.y) {
            const int r0 = rt * SW_TILE;
            for (int k = ty; k < SW_TILE; k += SW_ROWS) {
                const int r = r0 + k, c = c0 + tx;
                if (r < R && c < C) tile[k][tx] = act(src[((b * R + r) * M + m) * C + c], depth);
            }
            __syncthreads();
            for (int k = ty; k < SW_TILE; k += SW_ROWS) {
                const int c = c0 + k, r = r0 + tx;
                if (c < C && r < R) dst[((b * C + c) * M + m) * R + r] = tile[tx][k];
            }
            __syncthreads();
        }
    }
}

// The gradient of pw_swap with depth ≥ 1: dx[b][r][m][c] = g[b][c][m][r]·act'(x[b][r][m][c]),
// g (B, C, M, R), x and dx (B, R, M, C); g's tile is transposed through shared memory.
extern "C" __global__ void pw_swap_grad(const float* __restrict__ g, const float* __restrict__ x,
                                        float* __restrict__ dx, long long bm_count, int R, int M,
                                        int C, int depth) {
    __shared__ float tile[SW_TILE][SW_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c0 = blockIdx.x * SW_TILE;
    const int r_tiles = (R + SW_TILE - 1) / SW_TILE;
    for (long long bm = blockIdx.z; bm < bm_count; bm += gridDim.z) {
        const long long b = bm / M;
        const int m = (int)(bm - b * M);
        for (int rt = blockIdx.y; rt < r_tiles; rt += gridDim.y) {
            const int r0 = rt * SW_TILE;
            for (int k = ty; k < SW_TILE; k += SW_ROWS) {
                const int c = c0 + k, r = r0 + tx;
                if (c < C && r < R) tile[k][tx] = g[((b * C + c) * M + m) * R + r];
            }
            __syncthreads();
            for (int k = ty; k < SW_TILE; k += SW_ROWS) {
                const int r = r0 + k, c = c0 + tx;
                if (r < R && c < C) {
                    const long long i = ((b * R + r) * M + m) * C + c;
                    dx[i] = tile[tx][k] * act_d(x[i], depth);
                }
            }
            __syncthreads();
        }
    }
}
