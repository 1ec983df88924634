// Pointwise kernels around cuFFT for the FFT form of the causal convolution (kernels/src/fft.rs).
//
// Rows are stored for an in-place real FFT of length n: a row holds W = n + 2 floats (the real
// signal in its first n, or n/2 + 1 complex bins after the forward transform). One thread an
// element, grid-stride over 64-bit indices; every output is written by one thread, and the batch
// sum of fc_xcorr_sum runs in batch order, so the results are deterministic.

// out[r][i] = i < take ? x[r·src_stride + i] : 0, for i < W (zero padding to the FFT length).
extern "C" __global__ void fc_pad(const float* __restrict__ x, float* __restrict__ out,
                                  long long rows, int W, int take, int src_stride) {
    const long long total = rows * W;
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total;
         o += (long long)gridDim.x * blockDim.x) {
        const long long r = o / W;
        const int i = (int)(o - r * W);
        out[o] = i < take ? x[r * src_stride + i] : 0.f;
    }
}

// X[r][f] ← scale · X[r][f] · K[c][f] (conj = 0, a convolution) or · conj(K[c][f]) (conj = 1, a
// correlation), c = r mod channels, f < nf = n/2 + 1 bins; rows of W floats.
extern "C" __global__ void fc_mul(float* __restrict__ X, const float* __restrict__ K,
                                  long long rows, int channels, int W, int nf, int conj,
                                  float scale) {
    const long long total = rows * nf;
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total;
         o += (long long)gridDim.x * blockDim.x) {
        const long long r = o / nf;
        const int f = (int)(o - r * nf);
        const int c = (int)(r % channels);
        float2* xp = reinterpret_cast<float2*>(X + r * W) + f;
        const float2 k = reinterpret_cast<const float2*>(K + (long long)c * W)[f];
        const float2 x = *xp;
        const float ki = conj ? -k.y : k.y;
        *xp = make_float2(scale * (x.x * k.x - x.y * ki), scale * (x.x * ki + x.y * k.x));
    }
}

// S[c][f] = scale · Σ_b G[b][c][f] · conj(U[b][c][f]), b in order (the batch sum of ∂k's
// correlation); G, U: batch·channels rows, S: channels rows, each of W floats.
extern "C" __global__ void fc_xcorr_sum(const float* __restrict__ G, const float* __restrict__ U,
                                        float* __restrict__ S, int batch, int channels, int W,
                                        int nf, float scale) {
    const long long total = (long long)channels * nf;
    const long long plane = (long long)channels * W;
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total;
         o += (long long)gridDim.x * blockDim.x) {
        const long long c = o / nf;
        const int f = (int)(o - c * nf);
        const long long at = c * W + 2 * f;
        float re = 0.f, im = 0.f;
        for (int b = 0; b < batch; b++) {
            const float2 g = *reinterpret_cast<const float2*>(G + b * plane + at);
            const float2 u = *reinterpret_cast<const float2*>(U + b * plane + at);
            re = fmaf(g.x, u.x, fmaf(g.y, u.y, re));
            im = fmaf(g.y, u.x, fmaf(-g.x, u.y, im));
        }
        *reinterpret_cast<float2*>(S + at) = make_float2(scale * re, scale * im);
    }
}

// out[r][t] = t < valid ? X[r][t] : 0, for t < len (the first outputs of the inverse transform).
extern "C" __global__ void fc_take(const float* __restrict__ X, float* __restrict__ out,
                                   long long rows, int W, int len, int valid) {
    const long long total = rows * len;
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total;
         o += (long long)gridDim.x * blockDim.x) {
        const long long r = o / len;
        const int t = (int)(o - r * len);
        out[o] = t < valid ? X[r * W + t] : 0.f;
    }
}
