// S4D's convolution kernel and its gradients (kernels/src/vandermonde.rs):
//
//   K[(h,c), t] = 2·Re Σ_n w[c,h,n]·z[h,n]^t                          t < L
//   ∂w[c,h,n]   = 2·conj(Σ_t G[(h,c),t]·z^t)
//   ∂z[h,n]     = 2·Σ_c conj(w[c,h,n]·Σ_t G[(h,c),t]·t·z^{t−1})
//
// z (H, N, 2) and w (ch, H, N, 2) are complex (re, im) in f32; the powers and sums run in f64
// (the H100's FP64 rate is half its FP32), so the result does not drift with t: a thread forms
// z^t0 by binary powering and steps by z^STRIDE. The sums over t run per thread in t order and
// then over the block's threads in a fixed tree: deterministic.

#define VD_THREADS 256
#define VD_STEPS 8

struct cplx {
    double re, im;
};

__device__ __forceinline__ cplx cmul(cplx a, cplx b) {
    return {fma(a.re, b.re, -a.im * b.im), fma(a.re, b.im, a.im * b.re)};
}

// z^e by binary powering (e ≥ 0).
__device__ cplx cpow(cplx z, long long e) {
    cplx r = {1.0, 0.0};
    while (e > 0) {
        if (e & 1) r = cmul(r, z);
        e >>= 1;
        if (e) z = cmul(z, z);
    }
    return r;
}

__device__ __forceinline__ cplx load(const float* p) { return {(double)p[0], (double)p[1]}; }

// Grid (⌈L / (VD_THREADS·VD_STEPS)⌉, H); thread j of tile b owns t = b·VD_THREADS·VD_STEPS + j +
// s·VD_THREADS, s < VD_STEPS. K is (H·ch, L), rows (h, c).
extern "C" __global__ void vd_kernel(const float* __restrict__ z, const float* __restrict__ w,
                                     float* __restrict__ K, int H, int N, int ch, long long L) {
    const int h = blockIdx.y;
    const long long t0 = (long long)blockIdx.x * VD_THREADS * VD_STEPS + threadIdx.x;
    if (t0 >= L) return;
    for (int c = 0; c < ch; c++) {
        double acc[VD_STEPS];
        for (int s = 0; s < VD_STEPS; s++) acc[s] = 0.0;
        for (int n = 0; n < N; n++) {
            const cplx zn = load(z + 2 * ((long long)h * N + n));
            const cplx wn = load(w + 2 * (((long long)c * H + h) * N + n));
            const cplx step = cpow(zn, VD_THREADS);
            cplx p = cmul(wn, cpow(zn, t0));
            for (int s = 0; s < VD_STEPS; s++) {
                acc[s] += p.re;
                p = cmul(p, step);
            }
        }
        float* row = K + ((long long)h * ch + c) * L;
        for (int s = 0; s < VD_STEPS; s++) {
            const long long t = t0 + (long long)s * VD_THREADS;
            if (t < L) row[t] = (float)(2.0 * acc[s]);
        }
    }
}

// Block sum of a per-thread value in a fixed tree order (all threads get the total).
__device__ cplx block_sum(cplx v, cplx* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int half = VD_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            shared[threadIdx.x].re += shared[threadIdx.x + half].re;
            shared[threadIdx.x].im += shared[threadIdx.x + half].im;
        }
        __syncthreads();
    }
    const cplx r = shared[0];
    __syncthreads();
    return r;
}

// Grid (N, H): one block per (h, n), its threads striding over t. Writes ∂z (H, N, 2) and after
// it ∂w (ch, H, N, 2), both in dzw.
extern "C" __global__ void vd_grad(const float* __restrict__ z, const float* __restrict__ w,
                                   const float* __restrict__ G, float* __restrict__ dzw, int H,
                                   int N, int ch, long long L) {
    __shared__ cplx shared[VD_THREADS];
    float* dz = dzw;
    float* dw = dzw + 2 * (long long)H * N;
    const int n = blockIdx.x, h = blockIdx.y;
    const cplx zn = load(z + 2 * ((long long)h * N + n));
    const cplx step = cpow(zn, VD_THREADS);
    const long long j = threadIdx.x;
    cplx dz_sum = {0.0, 0.0};
    for (int c = 0; c < ch; c++) {
        const float* g = G + ((long long)h * ch + c) * L;
        // a = Σ_t g_t z^t, b = Σ_t g_t·t·z^{t−1} over this thread's t = j + s·VD_THREADS
        cplx a = {0.0, 0.0}, b = {0.0, 0.0};
        cplx prev = j > 0 ? cpow(zn, j - 1) : cplx{0.0, 0.0};  // z^{t−1}
        cplx cur = j > 0 ? cmul(prev, zn) : cplx{1.0, 0.0};    // z^t
        for (long long t = j; t < L; t += VD_THREADS) {
            const double gt = (double)g[t];
            a.re = fma(gt, cur.re, a.re);
            a.im = fma(gt, cur.im, a.im);
            const double gtt = gt * (double)t;
            b.re = fma(gtt, prev.re, b.re);
            b.im = fma(gtt, prev.im, b.im);
            // t = 0 has no z^{t−1} term; from t ≥ 1 both step by z^VD_THREADS
            if (t == 0) prev = cpow(zn, VD_THREADS - 1);
            else prev = cmul(prev, step);
            cur = cmul(cur, step);
        }
        a = block_sum(a, shared);
        b = block_sum(b, shared);
        if (threadIdx.x == 0) {
            const cplx wn = load(w + 2 * (((long long)c * H + h) * N + n));
            float* o = dw + 2 * (((long long)c * H + h) * N + n);
            o[0] = (float)(2.0 * a.re);
            o[1] = (float)(-2.0 * a.im);
            const cplx wb = cmul(wn, b);
            dz_sum.re += 2.0 * wb.re;
            dz_sum.im -= 2.0 * wb.im;
        }
    }
    if (threadIdx.x == 0) {
        float* o = dz + 2 * ((long long)h * N + n);
        o[0] = (float)dz_sum.re;
        o[1] = (float)dz_sum.im;
    }
}
