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
// One thread per (batch row, state n), walking the sequence in order (forward) or in reverse
// (backward); consecutive threads own consecutive n, so every load and store is coalesced.

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
