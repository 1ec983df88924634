// Batched dense linear solve X = A⁻¹ B (kernels/src/solve.rs), for S4's discretization and
// input vectors:
//
//   A (N, M, M), B (N, M, K), X (N, M, K), row-major; system s is A[s] X[s] = B[s].
//
// One block a system, Gauss–Jordan elimination with partial pivoting on the augmented rows
// [A | B] held in f64: in dynamic shared memory when M·(M + K) doubles fit (`in_shared`), else
// in a global scratch buffer (a launch's systems, M, M + K). For each column c: the pivot row
// p = argmax_{r ≥ c} |aug[r][c]| (the first on ties, as the host's loop picks it), rows c and p
// swapped, row c scaled by 1/aug[c][c], then every other row r ← r − aug[r][c]·row c. Compiled
// without fused multiply-adds (--fmad=false), each value goes through the host's operations in
// the host's order. A zero or non-finite pivot, or a non-finite X, marks the system singular:
// `singular` ends as the smallest such system index (an integer atomicMin, so the result does
// not depend on the order the blocks run in).

#define SOLVE_THREADS 256  // at least 32: the first warp finds the pivots
#define SOLVE_MAX_M 1024

template <typename T>
__device__ void solve_system(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ X,
                             double* __restrict__ aug_all, int* __restrict__ singular, int M,
                             int K, int in_shared, int first) {
    extern __shared__ double aug_shared[];
    __shared__ double factor[SOLVE_MAX_M];
    __shared__ double pivot_val, diag_val;  // aug[p][c] and aug[c][c] before the swap
    __shared__ int pivot_row;
    const long long sys = blockIdx.x;
    const int W = M + K;
    const int tid = threadIdx.x;
    const T* a = A + sys * M * M;
    const T* b = B + sys * M * K;
    T* x = X + sys * M * K;
    double* aug = in_shared ? aug_shared : aug_all + sys * M * W;

    for (int i = tid; i < M * W; i += SOLVE_THREADS) {
        const int r = i / W, j = i % W;
        aug[i] = j < M ? (double)a[(long long)r * M + j] : (double)b[(long long)r * K + (j - M)];
    }
    __syncthreads();

    for (int c = 0; c < M; c++) {
        // pivot, by the first warp: the largest |aug[r][c]|, r ≥ c, the first row on ties (a
        // NaN wins, so that it is seen below)
        if (tid < 32) {
            double bv = -1.0;
            int br = M;
            for (int r = c + tid; r < M; r += 32) {
                const double v = fabs(aug[(long long)r * W + c]);
                if (v > bv || (v != v && bv == bv)) {
                    bv = v;
                    br = r;
                }
            }
            for (int off = 16; off > 0; off >>= 1) {
                const double ov = __shfl_down_sync(0xffffffffu, bv, off);
                const int orow = __shfl_down_sync(0xffffffffu, br, off);
                const bool other_nan = ov != ov, mine_nan = bv != bv;
                const bool take = other_nan ? (!mine_nan || orow < br)
                                            : (!mine_nan && (ov > bv || (ov == bv && orow < br)));
                if (take) {
                    bv = ov;
                    br = orow;
                }
            }
            if (tid == 0) {
                pivot_row = br;
                pivot_val = br < M ? aug[(long long)br * W + c] : 0.0;
                diag_val = aug[(long long)c * W + c];
            }
        }
        __syncthreads();
        const int p = pivot_row;
        const double pv = pivot_val, old_diag = diag_val;
        if (pv == 0.0 || !isfinite(pv)) {
            if (tid == 0) atomicMin(singular, first + (int)sys);
            return;  // uniform: every thread read the same pivot
        }
        // rows c and p swapped and row c scaled by 1/pv, from column c on (the columns before c
        // are eliminated in both and never read again); each row's factor aug[r][c] (after the
        // swap) kept
        const double inv = 1.0 / pv;
        for (int j = c + tid; j < W; j += SOLVE_THREADS) {
            const double top = aug[(long long)p * W + j];
            if (p != c) aug[(long long)p * W + j] = aug[(long long)c * W + j];
            aug[(long long)c * W + j] = top * inv;
        }
        for (int r = tid; r < M; r += SOLVE_THREADS)
            factor[r] = r == p ? old_diag : (r == c ? 0.0 : aug[(long long)r * W + c]);
        __syncthreads();
        // row r ← row r − f_r · row c, for every r ≠ c, over the columns from c on: the
        // (row, column) pairs in row-major order, SOLVE_THREADS apart (one division a column)
        const int cols = W - c;
        const int dr = SOLVE_THREADS / cols, dj = SOLVE_THREADS % cols;
        for (int r = tid / cols, j = tid % cols; r < M;) {
            const double f = factor[r];
            if (r != c && f != 0.0) aug[(long long)r * W + c + j] -= f * aug[(long long)c * W + c + j];
            r += dr;
            j += dj;
            if (j >= cols) {
                j -= cols;
                r++;
            }
        }
        __syncthreads();
    }

    bool finite = true;
    for (int i = tid; i < M * K; i += SOLVE_THREADS) {
        const int r = i / K, k = i % K;
        const double v = aug[(long long)r * W + M + k];
        finite = finite && isfinite(v);
        x[i] = (T)v;
    }
    if (!finite) atomicMin(singular, first + (int)sys);
}

// Grid (systems of this launch), block SOLVE_THREADS; M ≤ SOLVE_MAX_M and
// M·(M + K) + SOLVE_THREADS < 2³¹ (checked by the host). A, B, X start at the launch's first
// system, whose index in the whole batch is `first` (for `singular`). With `in_shared`,
// M·(M + K)·8 bytes of dynamic shared memory and `aug` unused; else `aug` holds
// (systems of this launch)·M·(M + K) doubles.
extern "C" __global__ void solve_f32(const float* A, const float* B, float* X, double* aug,
                                     int* singular, int M, int K, int in_shared, int first) {
    solve_system<float>(A, B, X, aug, singular, M, K, in_shared, first);
}

extern "C" __global__ void solve_f64(const double* A, const double* B, double* X, double* aug,
                                     int* singular, int M, int K, int in_shared, int first) {
    solve_system<double>(A, B, X, aug, singular, M, K, in_shared, first);
}
