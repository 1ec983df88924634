// S7 input and output projections (lrnnx spec §4.5) around the s7-rule selective scan, in the
// time-major layout of the kernels (rows r = batch·L + t):
//   u (rows, H), Bm (rows, N, H), bias (rows, N), C (rows, H, N), x (rows, N), y (rows, H)
//   s7_in:        bu[r, n] = Σ_h Bm[r, n, h]·u[r, h] + bias[r, n]
//   s7_out:       y[r, h]  = Σ_n C[r, h, n]·x[r, n]
//   s7_out_bwd_x: dx[r, n] = Σ_h C[r, h, n]·dy[r, h]
//   s7_in_bwd_u:  du[r, h] = Σ_n Bm[r, n, h]·dbu[r, n]
//   s7_outer:     out[r, p, q] = a[r, p]·b[r, q]   (dC = dy ⊗ x, dB = dbu ⊗ u)
// One thread per output element; every sum runs in index order (deterministic).

extern "C" __global__ void s7_in(const float* __restrict__ u, const float* __restrict__ Bm,
                                 const float* __restrict__ bias, float* __restrict__ bu,
                                 int rows, int N, int H, int has_bias) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * N) return;
    const size_t r = i / N;
    float acc = has_bias ? bias[i] : 0.f;
    const float* b = Bm + i * H;
    const float* x = u + r * H;
    for (int h = 0; h < H; h++) acc = fmaf(b[h], x[h], acc);
    bu[i] = acc;
}

extern "C" __global__ void s7_out(const float* __restrict__ C, const float* __restrict__ x,
                                  float* __restrict__ y, int rows, int N, int H) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * H) return;
    const size_t r = i / H;
    const float* c = C + i * N;
    const float* v = x + r * N;
    float acc = 0.f;
    for (int n = 0; n < N; n++) acc = fmaf(c[n], v[n], acc);
    y[i] = acc;
}

extern "C" __global__ void s7_out_bwd_x(const float* __restrict__ C, const float* __restrict__ dy,
                                        float* __restrict__ dx, int rows, int N, int H) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * N) return;
    const size_t r = i / N, n = i % N;
    float acc = 0.f;
    for (int h = 0; h < H; h++) acc = fmaf(C[(r * H + h) * N + n], dy[r * H + h], acc);
    dx[i] = acc;
}

extern "C" __global__ void s7_in_bwd_u(const float* __restrict__ Bm, const float* __restrict__ dbu,
                                       float* __restrict__ du, int rows, int N, int H) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * H) return;
    const size_t r = i / H, h = i % H;
    float acc = 0.f;
    for (int n = 0; n < N; n++) acc = fmaf(Bm[(r * N + n) * H + h], dbu[r * N + n], acc);
    du[i] = acc;
}

extern "C" __global__ void s7_outer(const float* __restrict__ a, const float* __restrict__ b,
                                    float* __restrict__ out, int rows, int P, int Q) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * P * Q) return;
    const size_t q = i % Q, rp = i / Q, r = rp / P;
    out[i] = a[rp] * b[r * Q + q];
}
