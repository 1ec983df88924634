// Selective scan, sequential mode: real A, time-varying B/C, N ≤ 16 (compiled after
// selective_scan.cu with SEQ=1, which then defines only its shared helpers and the reductions).
// Same equations, layouts, entry points and outputs as the chunked kernels (see there).
//
// Parallel structure. There are Bsz·E·N independent recurrences; when Bsz·E alone fills the GPU
// (thousands of channels) time can be walked sequentially: a thread owns one channel and
// NPT = N/SPLIT of its states (SPLIT = 1, 2 or 4 threads per channel, adjacent lanes) in registers,
// so each (step, state) costs one ex2 and three FMA-pipe instructions in the forward and no scan
// operators at all. A block holds SCB = 32·SWARP/SPLIT consecutive channels of one batch row and
// walks the sequence in chunks of ST steps, each chunk's rows (u, Δ, ΔA, z, dy: [ST][SCB];
// B_t, C_t: [ST][N]) staged in shared memory by cp.async one chunk ahead (double buffer).
//
// Forward: per step, h[n] = Ā·h[n] + γ̄·B_t[n]·u_t and y = Σ C_t[n]·h[n] (the thread's states,
// summed over the channel's SPLIT lanes), D skip and z gate; in a group of FK steps the sums go
// through a transposing butterfly and lane p stores steps p·FK/SPLIT.. of the group (lane 0
// stores the steps of a remainder); the state at every chunk start goes to hs (Bsz, ⌈L/ST⌉, N,
// E) for the backward.
// Backward, chunks in reverse: from the chunk's checkpoint, pass A re-walks the chunk and keeps
// the state at every sub-chunk start (SS steps) in shared memory; then, sub-chunks in reverse,
// pass B re-walks SS steps keeping Ā_t and h_t in registers, and the reverse walk runs the
// adjoint m_t = Ā_t·(G_t·C_t[n] + m_{t+1}) with the gradients of the chunked kernel. The dB/dC
// terms of a step (2·NPT values per lane) are summed over the warp's channels by an xor
// butterfly that leaves one sum per lane (lane = v·SPLIT + part holds value v; VB/VC; at N = 16
// the lanes' state slots are xor-permuted so that its widest levels need no selects, XPERM),
// parked in the step's staged u/dy entries of the warp's own channels (read already; with
// SPLIT = 4 a warp's 8 channels give too few entries, so a [ST][SWARP][32] park area follows),
// then summed over the block's warps in warp order into the (Bsz, nblk, L, 2N) partials of
// ss_reduce_bc; per-channel sums go to the (Bsz, E, 3N + 2) partials of ss_reduce_e. The
// per-(step, channel) outputs are stored by the channel's lanes in turn (SeqOut), without a
// branch, so a sub-chunk's unrolled steps stay one basic block the compiler can interleave.
// Deterministic: fixed order throughout.
//
// Defines: SPLIT (1, 2, 4), SWARP (warps per block), ST (steps per chunk), SS (steps per sub-chunk,
// divides ST), plus the rule / flag defines of selective_scan.cu. Requires !COMPLEX, !BC_FIXED,
// NSTATE ≤ 16 (the butterfly pads to 32/SPLIT values), NSTATE % SPLIT == 0, and the channels of a
// block inside one group.

#if COMPLEX || BC_FIXED
#error "the sequential mode takes real A and time-varying B/C"
#endif
#ifndef SPLIT
#define SPLIT 2
#endif
#ifndef SWARP
#define SWARP 8
#endif
#ifndef ST
#define ST 32
#endif
#ifndef SS
#define SS 4
#endif
#if NSTATE > 16 || NSTATE % SPLIT != 0 || ST % SS != 0 || (SPLIT & (SPLIT - 1)) || SPLIT > 4
#error "unsupported sequential-mode geometry"
#endif

#define SNT (32 * SWARP)       // threads per block
// Backward blocks per SM the registers must allow (caps them at 64K / (SNT · this)); set by
// Variant::defines to 2 where two blocks' shared memory fits an SM (4 lanes a channel)
#ifndef SEQ_BWD_BLOCKS
#define SEQ_BWD_BLOCKS 1
#endif
#define SCB (SNT / SPLIT)      // channels per block
#define NPT (NSTATE / SPLIT)   // states per thread
#define VL (32 / SPLIT)        // values per lane entering the dB/dC butterfly (≥ 2·NPT)
#define NSUB (ST / SS)         // sub-chunks per chunk
#define VEC4 (NPT % 4 == 0)    // B_t/C_t slices load as float4
#define PARK (SPLIT == 4)      // the butterfly sums need their own park area
// Backward with N = 16 (then 2·NPT = VL): the lanes' state slots are xor-permuted so that the
// dB/dC butterfly's widest levels need no selects. A lane's slot j holds state p·NPT + (j ^ x),
// x = the lane's bits that the butterfly's state levels split on but the lowest (seq_xmask);
// at those levels every lane keeps its values [0, cnt) and sends [cnt, 2·cnt) (slots [0, cnt/2)
// and [cnt/2, cnt): dB and dC terms interleave, VB/VC), whose partner's hold the same states;
// the last state level (cnt 2) and the dB/dC level (cnt 1) select as before. The B_t/C_t slices
// still load as float4: x's bits from 2 up pick the float4 (an address), its bit 1 one of BCC
// staged copies of each row, copy k holding element n at n ^ 2k (seq_stage_bcx).
#define XPERM (NSTATE == 16)
#define BCC (XPERM ? 2 : 1)    // copies of each staged B/C row in the backward
// Butterfly value index of slot j's dB and dC terms: interleaved with XPERM (the state bits
// on top, so the state levels come first), else dB terms then dC terms.
#define VB(j) (XPERM ? 2 * (j) : (j))
#define VC(j) (XPERM ? 2 * (j) + 1 : NPT + (j))

// x summed over the SPLIT lanes of a channel (every lane gets the sum)
__device__ __forceinline__ float split_sum(float x) {
#pragma unroll
    for (int o = 1; o < SPLIT; o <<= 1) x += __shfl_xor_sync(FULL, x, o);
    return x;
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait_1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait_0() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Asynchronous 16-byte copy global -> shared (zero-filled when !valid), L2 only.
__device__ __forceinline__ void cp16(float* dst, const float* src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    const int sz = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(sz)
                 : "memory");
}

// Whether seq_stage copies the rows of X in 16-byte quads (E % 4 == 0 and X 16-byte aligned).
__device__ __forceinline__ bool seq_quads(const float* X, int E) {
    constexpr int Q = SCB / 4;
    return SCB % 4 == 0 && SNT % Q == 0 && ST % (SNT / Q) == 0 && (E & 3) == 0 &&
           ((size_t)X & 15) == 0;
}

// Rows t0..t0+ST−1 of channels e0..e0+SCB−1 of a (Bsz, L, E) tensor into s[t][c] (zeros past L):
// 16-byte copies when the rows are 16-byte aligned (E % 4 == 0 and X aligned), else 4-byte.
__device__ __forceinline__ void seq_stage(const float* __restrict__ X, float* s, int b, int t0,
                                          int e0, int L, int E) {
    constexpr int Q = SCB / 4;  // quads per row
    if (seq_quads(X, E)) {
        constexpr int RPI = SNT / Q;  // rows per pass
        const int t = threadIdx.x / Q, c = 4 * (threadIdx.x % Q);
        // one 64-bit address a chunk, then a constant stride (RPI rows) a copy
        const float* src = X + ((size_t)b * L + t0) * E + (e0 + c + t * E);
        const size_t stride = (size_t)RPI * E;
        float* dst = s + t * SCB + c;
#pragma unroll
        for (int r = 0; r < ST / RPI; r++) {
            const bool ok = t0 + t + r * RPI < L;
            cp16(dst + r * RPI * SCB, ok ? src : X, ok);
            src += stride;
        }
    } else {
#pragma unroll 4
        for (int j = threadIdx.x; j < ST * SCB; j += SNT) {
            const int t = j / SCB, c = j % SCB;
            const bool ok = t0 + t < L;
            cp4(s + j, ok ? X + ((size_t)b * L + t0 + t) * E + e0 + c : X, ok);
        }
    }
}
// Δ of one staged raw time step: softplus(raw + bias) (or raw + bias); with a softplus, *sg
// gets ∂Δ/∂raw = σ(raw + bias) (1 past SOFTPLUS_CUT, as softplus_f).
__device__ __forceinline__ float seq_delta(float raw, float db, float* sg) {
    float r = raw;
#if HAS_DB
    r += db;
#else
    (void)db;
#endif
#if SOFTPLUS
    return softplus_sig(r, sg);
#else
    *sg = 1.f;
    return r;
#endif
}

// The time-step biases of the four channels whose quads this thread stages (seq_stage's quads
// path; zeros without HAS_DB), loaded once per kernel for seq_delta_tile.
__device__ __forceinline__ float4 seq_bias4(const float* __restrict__ dbias, int e0, int E) {
    float4 q = make_float4(0.f, 0.f, 0.f, 0.f);
#if HAS_DB
    constexpr int Q = SCB / 4;
    const int e = e0 + 4 * (threadIdx.x % Q);
    if (e + 3 < E) q = make_float4(dbias[e], dbias[e + 1], dbias[e + 2], dbias[e + 3]);
#else
    (void)dbias; (void)e0; (void)E;
#endif
    return q;
}
// The staged raw time steps of chunk rows t0.. (tile sD, staged from X by seq_stage) turned into
// Δ in place, 0 past L, and with sS (non-null) the softplus derivatives into sS. Each thread
// converts exactly the elements it staged itself, right after waiting for its own copies, so the
// barrier that publishes the chunk covers this too; each (step, channel) is converted once
// per block instead of once per lane of its channel. bq: seq_bias4 (the quads path).
__device__ __forceinline__ void seq_delta_tile(float* sD, float* sS, const float* __restrict__ X,
                                               const float* __restrict__ dbias, float4 bq, int t0,
                                               int e0, int L, int E) {
    (void)dbias;
    auto bias = [&](int c) {
#if HAS_DB
        return dbias[e0 + c];
#else
        (void)c;
        return 0.f;
#endif
    };
    if (seq_quads(X, E)) {
        constexpr int Q = SCB / 4, RPI = SNT / Q;
        const int t = threadIdx.x / Q, c = 4 * (threadIdx.x % Q);
        const float b0 = bq.x, b1 = bq.y, b2 = bq.z, b3 = bq.w;
#pragma unroll
        for (int r = 0; r < ST / RPI; r++) {
            const int tt = t + r * RPI;
            float4* p = reinterpret_cast<float4*>(sD + tt * SCB + c);
            float4 v = *p, g;
            v.x = seq_delta(v.x, b0, &g.x);
            v.y = seq_delta(v.y, b1, &g.y);
            v.z = seq_delta(v.z, b2, &g.z);
            v.w = seq_delta(v.w, b3, &g.w);
            if (t0 + tt >= L) {  // rows past L (staged as zeros): Δ = 0, an identity step
                v = make_float4(0.f, 0.f, 0.f, 0.f);
                g = v;
            }
            *p = v;
            if (sS) *reinterpret_cast<float4*>(sS + tt * SCB + c) = g;
        }
    } else {
        for (int j = threadIdx.x; j < ST * SCB; j += SNT) {
            const int t = j / SCB, c = j % SCB;
            float g = 0.f;
            sD[j] = t0 + t < L ? seq_delta(sD[j], bias(c), &g) : 0.f;
            if (sS) sS[j] = g;
        }
    }
}

// B_t or C_t rows of group g into s[t][n] (zeros past L).
__device__ __forceinline__ void seq_stage_bc(const float* __restrict__ M, float* s, int b, int t0,
                                             int L, int G, int g) {
    const float* row0 = M + (((size_t)b * L + t0) * G + g) * NSTATE;
    for (int j = threadIdx.x; j < ST * NSTATE; j += SNT) {
        const int t = j / NSTATE, n = j % NSTATE;
        const bool ok = t0 + t < L;
        cp4(s + j, ok ? row0 + (t * G * NSTATE + n) : M, ok);
    }
}
// B_t or C_t rows of group g into BCC copies s + k·ST·N, copy k holding element n of a row at
// n ^ 2k (zeros past L).
__device__ __forceinline__ void seq_stage_bcx(const float* __restrict__ M, float* s, int b,
                                              int t0, int L, int G, int g) {
    const float* row0 = M + (((size_t)b * L + t0) * G + g) * NSTATE;
    for (int j = threadIdx.x; j < ST * NSTATE; j += SNT) {
        const int t = j / NSTATE, n = j % NSTATE;
        const bool ok = t0 + t < L;
        const float* src = ok ? row0 + (t * G * NSTATE + n) : M;
#pragma unroll
        for (int k = 0; k < BCC; k++)
            cp4(s + k * ST * NSTATE + t * NSTATE + (n ^ (2 * k)), src, ok);
    }
}
// The state-slot xor mask x of lane `lane` (0 without XPERM): the lane bits of the butterfly's
// state levels, o = 16 down to 4·SPLIT, as the bits of a slot index (bit 0, level o = 2·SPLIT,
// is not permuted).
__device__ __forceinline__ int seq_xmask(int lane) {
#if XPERM
    return (lane / (2 * SPLIT)) & (NPT - 2);
#else
    (void)lane;
    return 0;
#endif
}
// This thread's NPT consecutive floats of a staged B/C row.
__device__ __forceinline__ void seq_ld(const float* p, float (&v)[NPT]) {
#if VEC4
#pragma unroll
    for (int j = 0; j < NPT; j += 4) {
        const float4 q = *reinterpret_cast<const float4*>(p + j);
        v[j] = q.x; v[j + 1] = q.y; v[j + 2] = q.z; v[j + 3] = q.w;
    }
#else
#pragma unroll
    for (int j = 0; j < NPT; j++) v[j] = p[j];
#endif
}
// A lane's view of the staged B or C rows in the backward: with XPERM, q[f] is where its slots
// 4f..4f+3 start in row 0 (copy (x >> 1) & 1 of seq_stage_bcx, float4 f ^ (x >> 2)), so that
// v[j] = row_t[j ^ x]; else q[0] is its NPT consecutive floats of row 0.
#define NQ (XPERM ? NPT / 4 : 1)
struct SeqRows {
    const float* q[NQ];
};
__device__ __forceinline__ SeqRows seq_rows(const float* region, int xm, int p) {
    SeqRows r;
#if XPERM
#pragma unroll
    for (int f = 0; f < NQ; f++)
        r.q[f] = region + ((xm >> 1) & 1) * ST * NSTATE + p * NPT + 4 * (f ^ (xm >> 2));
#else
    (void)xm;
    r.q[0] = region + p * NPT;
#endif
    return r;
}
// Slots of staged row t through a SeqRows (v[j] = B_t[state of slot j]).
__device__ __forceinline__ void seq_ldx(const SeqRows& r, int t, float (&v)[NPT]) {
#if XPERM
#pragma unroll
    for (int f = 0; f < NQ; f++) {
        const float4 q = *reinterpret_cast<const float4*>(r.q[f] + t * NSTATE);
        v[4 * f] = q.x; v[4 * f + 1] = q.y; v[4 * f + 2] = q.z; v[4 * f + 3] = q.w;
    }
#else
    seq_ld(r.q[0] + t * NSTATE, v);
#endif
}
// γ̄_n·u_t for state j: mamba Δ·u, dirac / s7 u, rglru sqrt(1 − Ā²)·u, zoh / bilinear γ̄(Δ, a)·u
__device__ __forceinline__ float seq_gu(float d, float uu, float du, float a, float ab) {
#if RULE == R_MAMBA
    (void)d; (void)uu; (void)a; (void)ab;
    return du;
#elif RULE == R_DIRAC || RULE == R_S7
    (void)d; (void)du; (void)a; (void)ab;
    return uu;
#elif RULE == R_RGLRU
    (void)d; (void)du; (void)a;
    return sqrtf(fmaxf(fmaf(-ab, ab, 1.f), 0.f)) * uu;
#else
    (void)du; (void)ab;
    return gbar(d, a) * uu;
#endif
}
// The same γ̄ alone (backward)
__device__ __forceinline__ float seq_gb(float d, float a, float ab) {
#if RULE == R_RGLRU
    (void)d; (void)a;
    return sqrtf(fmaxf(fmaf(-ab, ab, 1.f), 0.f));
#else
    (void)ab;
    return gbar(d, a);
#endif
}

// K consecutive steps t.. of the forward. Everything but the state chain h ← Ā·h + γ̄·B·u is
// independent across the K steps (time steps, Ā, inputs), so the K steps are written out for
// the compiler to overlap their latencies (one warp's steps otherwise wait on each other).
#ifndef FK
#define FK 4
#endif
template <int K>
__device__ __forceinline__ void seq_fwd_group(float (&h)[NPT], const float (&a)[NPT],
                                              const float (&al)[NPT], float Dd,
                                              const float* sU, const float* sD, const float* sDA,
                                              const float* sZ, const float* sB, const float* sC,
                                              int t, int c, int p, float* yo, int E) {
    (void)sDA; (void)sZ; (void)Dd;
    float uu[K], d[K], x[K], acc[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        uu[k] = sU[(t + k) * SCB + c];
        d[k] = sD[(t + k) * SCB + c];  // Δ (seq_delta_tile)
#if HAS_DTA
        x[k] = sDA[(t + k) * SCB + c];
#else
        x[k] = d[k];
#endif
    }
#pragma unroll
    for (int k = 0; k < K; k++) {
        float Bv[NPT], Cv[NPT];
        seq_ld(sB + (t + k) * NSTATE + p * NPT, Bv);
        seq_ld(sC + (t + k) * NSTATE + p * NPT, Cv);
        const float du = d[k] * uu[k];
        (void)du;
        float a0 = 0.f, a1 = 0.f;  // two partial sums: half the dependent chain
#pragma unroll
        for (int j = 0; j < NPT; j++) {
            const float ab = abar(x[k], a[j], al[j]);
            h[j] = fmaf(ab, h[j], Bv[j] * seq_gu(d[k], uu[k], du, a[j], ab));
            if (j & 1) a1 = fmaf(Cv[j], h[j], a1);
            else a0 = fmaf(Cv[j], h[j], a0);
        }
        acc[k] = a0 + a1;
    }
    if (K % SPLIT == 0 && SPLIT > 1) {
        // y of the K steps summed over the channel's SPLIT lanes by a transposing butterfly:
        // at lane bit o, a lane keeps the upper half of its list (bit set) or the lower and
        // adds its partner's copy of the kept half, so lane p ends with the full sums of steps
        // p·K/SPLIT + i, i < K/SPLIT, and every lane stores (no divergent store of lane 0).
        float v[K];
#pragma unroll
        for (int k = 0; k < K; k++) v[k] = acc[k];
        int m = K;
#pragma unroll
        for (int o = SPLIT / 2; o >= 1; o >>= 1) {
            const bool hi = (p & o) != 0;
            m >>= 1;
#pragma unroll
            for (int i = 0; i < K / 2; i++) {
                if (i < m) {
                    const float keep = hi ? v[i + m] : v[i];
                    const float send = hi ? v[i] : v[i + m];
                    v[i] = keep + __shfl_xor_sync(FULL, send, o);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < K / SPLIT; i++) {
            const int tk = t + p * (K / SPLIT) + i;
            float yv = fmaf(Dd, sU[tk * SCB + c], v[i]);
#if HAS_Z
            const float zz = sZ[tk * SCB + c];
            yv *= __fdividef(zz, 1.f + __expf(-zz));
#endif
            yo[(size_t)tk * E] = yv;
        }
    } else {
#pragma unroll
        for (int k = 0; k < K; k++) {
            acc[k] = split_sum(acc[k]);
            if (p == 0) {
                float yv = fmaf(Dd, uu[k], acc[k]);
#if HAS_Z
                const float zz = sZ[(t + k) * SCB + c];
                yv *= __fdividef(zz, 1.f + __expf(-zz));
#endif
                yo[(size_t)(t + k) * E] = yv;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward.  grid (E / SCB, Bsz), block (SNT), dynamic shared memory (see Variant::shared_bytes).
extern "C" __global__ void __launch_bounds__(SNT)
ss_fwd(const float* __restrict__ u, const float* __restrict__ dt, const float* __restrict__ dta,
       const float* __restrict__ A, const float* __restrict__ Bm, const float* __restrict__ Cm,
       const float* __restrict__ Dv, const float* __restrict__ z, const float* __restrict__ dbias,
       float* __restrict__ y, float* __restrict__ hs, float* __restrict__ last, int L, int E,
       int G) {
    extern __shared__ float4 smem4[];
    // per buffer: u, Δ, [ΔA], [z] rows [ST][SCB]; B, C rows [ST][N]
    constexpr int TILES = 2 + HAS_DTA + HAS_Z;
    constexpr int BUF = TILES * ST * SCB + 2 * ST * NSTATE;
    float* base = reinterpret_cast<float*>(smem4);
    const int tid = threadIdx.x, c = tid / SPLIT, p = tid % SPLIT;
    const int b = blockIdx.y, e0 = blockIdx.x * SCB, e = e0 + c;
    const int g = e0 / (E / G);
    const int nck = (L + ST - 1) / ST;
    (void)dta; (void)z; (void)Dv; (void)dbias;

    float a[NPT], al[NPT], h[NPT];
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        a[j] = A[(size_t)e * NSTATE + p * NPT + j];
        al[j] = alog2(a[j]);
        h[j] = 0.f;
    }
    const float Dd = HAS_D ? Dv[e] : 0.f;
    (void)Dd;

    auto stage = [&](int ck) {
        float* s = base + (ck & 1) * BUF;
        const int t0 = ck * ST;
        seq_stage(u, s, b, t0, e0, L, E);
        seq_stage(dt, s + ST * SCB, b, t0, e0, L, E);
#if HAS_DTA
        seq_stage(dta, s + 2 * ST * SCB, b, t0, e0, L, E);
#endif
#if HAS_Z
        seq_stage(z, s + (2 + HAS_DTA) * ST * SCB, b, t0, e0, L, E);
#endif
        seq_stage_bc(Bm, s + TILES * ST * SCB, b, t0, L, G, g);
        seq_stage_bc(Cm, s + TILES * ST * SCB + ST * NSTATE, b, t0, L, G, g);
        cp_commit();
    };
    const float4 bq = seq_bias4(dbias, e0, E);
    stage(0);
    for (int ck = 0; ck < nck; ck++) {
        if (ck + 1 < nck) {
            stage(ck + 1);
            cp_wait_1();
        } else {
            cp_wait_0();
        }
        seq_delta_tile(base + (ck & 1) * BUF + ST * SCB, nullptr, dt, dbias, bq, ck * ST, e0, L,
                       E);
        __syncthreads();
        const float* s = base + (ck & 1) * BUF;
        const float* sU = s;
        const float* sD = s + ST * SCB;
        const float* sDA = s + 2 * ST * SCB;
        const float* sZ = s + (2 + HAS_DTA) * ST * SCB;
        const float* sB = s + TILES * ST * SCB;
        const float* sC = sB + ST * NSTATE;
        (void)sDA; (void)sZ;
        const int t0 = ck * ST, nt = min(ST, L - t0);
#pragma unroll
        for (int j = 0; j < NPT; j++)
            hs[(((size_t)b * nck + ck) * NSTATE + p * NPT + j) * E + e] = h[j];
        float* yo = y + ((size_t)b * L + t0) * E + e;
        int t = 0;
        for (; t + FK <= nt; t += FK)
            seq_fwd_group<FK>(h, a, al, Dd, sU, sD, sDA, sZ, sB, sC, t, c, p, yo, E);
        for (; t < nt; t++)
            seq_fwd_group<1>(h, a, al, Dd, sU, sD, sDA, sZ, sB, sC, t, c, p, yo, E);
        __syncthreads();  // the buffer is restaged two chunks on
    }
#pragma unroll
    for (int j = 0; j < NPT; j++) last[((size_t)b * E + e) * NSTATE + p * NPT + j] = h[j];
}

// ---------------------------------------------------------------------------------------------
// Backward.  grid (E / SCB, Bsz), block (SNT).  Outputs as the chunked ss_bwd.
struct SeqConst {
    float a[NPT], al[NPT];
    float Dd;
};

// The per-(step, channel) outputs du, ddt, [ddta], [dz] of the backward are stored by the
// channel's lanes in turn, without branches: lane p stores outputs p, p + SPLIT, .. of every
// step; q[r] points at output r·SPLIT + p's column of this channel at the chunk's first step.
#define SEQ_NOUT (2 + HAS_DTA + HAS_Z)
#define SEQ_OUT_R ((SEQ_NOUT + SPLIT - 1) / SPLIT)
struct SeqOut {
    float* q[SEQ_OUT_R];
};
// Entry r·SPLIT + p of a list of the SEQ_NOUT outputs (entry r·SPLIT where that is past the end:
// lane p then stores nothing in round r)
template <typename T>
__device__ __forceinline__ T seq_pick(const T (&x)[SEQ_NOUT], int r, int p) {
    T v = x[r * SPLIT];
#pragma unroll
    for (int q = 1; q < SPLIT; q++)
        if (r * SPLIT + q < SEQ_NOUT && p == q) v = x[r * SPLIT + q];
    return v;
}

// Where lane `ln` of warp `w` parks its butterfly sum of chunk step t: the staged u entries of
// the warp's own channels, then its dy entries (both read before the butterfly runs); with
// SPLIT = 4 the park area sP [ST][SWARP][32].
__device__ __forceinline__ float* seq_slot(float* sU, float* sY, float* sP, int t, int w, int ln) {
#if PARK
    (void)sU; (void)sY;
    return sP + (t * SWARP + w) * 32 + ln;
#else
    (void)sP;
    constexpr int WC = 32 / SPLIT;  // channels per warp
    return ln < WC ? sU + t * SCB + w * WC + ln : sY + t * SCB + w * WC + ln - WC;
#endif
}

// One sub-chunk of SS steps (chunk-local steps ts..ts+SS−1, of which the first nv are valid):
// pass B from the state h0 before it, then the reverse walk.  m, gA carried across sub-chunks;
// gD, gDB per-thread sums; each step's butterfly sums are parked with seq_slot.
template <bool TAIL>
__device__ __forceinline__ void seq_sub_chunk(
    const SeqConst& K, const float (&h0)[NPT], float (&m)[NPT], float (&gA)[NPT], float& gD,
    float& gDB, float* sU, const float* sD, const float* sDA, float* sY, const float* sZ,
    const SeqRows& sB, const SeqRows& sC, const float* sS, float* sP, int warp, int ts, int nv,
    int c, int p, int lane, const SeqOut& out, int E) {
    (void)sDA; (void)sZ; (void)sS; (void)nv;
    float uu[SS], dd[SS], xx[SS], Gq[SS];
#if HAS_Z
    float fz[SS];  // ∂y/∂z over the C·h + D·u it gates: dy·σ(z)·(1 + z·(1 − σ(z)))
#endif
#pragma unroll
    for (int i = 0; i < SS; i++) {
        const int t = ts + i;
        const bool valid = !TAIL || i < nv;
        (void)valid;
        uu[i] = sU[t * SCB + c];
        dd[i] = sD[t * SCB + c];  // Δ, 0 past L (seq_delta_tile)
#if HAS_DTA
        xx[i] = valid ? sDA[t * SCB + c] : 0.f;
#else
        xx[i] = dd[i];
#endif
        Gq[i] = sY[t * SCB + c];
#if HAS_Z
        {
            const float zv = sZ[t * SCB + c];
            const float sg = __fdividef(1.f, 1.f + __expf(-zv));
            fz[i] = Gq[i] * sg * fmaf(zv, 1.f - sg, 1.f);
            Gq[i] *= zv * sg;
        }
#endif
    }
    // pass B: Ā_t and h_t of the sub-chunk in registers
    float ab[SS][NPT], hh[SS + 1][NPT];
#pragma unroll
    for (int j = 0; j < NPT; j++) hh[0][j] = h0[j];
#pragma unroll
    for (int i = 0; i < SS; i++) {
        float Bv[NPT];
        seq_ldx(sB, ts + i, Bv);
        const float dui = dd[i] * uu[i];
        (void)dui;
#pragma unroll
        for (int j = 0; j < NPT; j++) {
            float abv = abar(xx[i], K.a[j], K.al[j]);
            if (TAIL && i >= nv) abv = 1.f;  // past L: identity step (B, u staged as zeros)
            ab[i][j] = abv;
            hh[i + 1][j] = fmaf(abv, hh[i][j], Bv[j] * seq_gu(dd[i], uu[i], dui, K.a[j], abv));
        }
    }
    // reverse walk
#pragma unroll
    for (int i = SS - 1; i >= 0; i--) {
        const bool valid = !TAIL || i < nv;
        float Bv[NPT], Cv[NPT];
        seq_ldx(sB, ts + i, Bv);
        seq_ldx(sC, ts + i, Cv);
        float vals[VL];
#pragma unroll
        for (int v = 2 * NPT; v < VL; v++) vals[v] = 0.f;
        float sgx = 0.f, sgd = 0.f, sgdu = 0.f;
#if HAS_Z
        float syp = 0.f;
#endif
        const float x = xx[i], d = dd[i], ui = uu[i], G = Gq[i];
        (void)d;
#if RULE == R_MAMBA
        float slb = 0.f;  // Σ_n λ_n·B_n (γ̄ = Δ for every state)
        const float dui = d * ui;
#endif
#pragma unroll
        for (int j = 0; j < NPT; j++) {
            const float a = K.a[j], abv = ab[i][j], hp = hh[i][j], hn = hh[i + 1][j];
            const float lam = fmaf(G, Cv[j], m[j]);
            const float mj = abv * lam;
            m[j] = mj;
#if HAS_Z
            syp = fmaf(Cv[j], hn, syp);
#endif
#if RULE == R_MAMBA
            const float dx = mj * hp;  // ∂L/∂(ΔA·a)
            gA[j] = fmaf(dx, x, gA[j]);
            sgx = fmaf(dx, a, sgx);
            slb = fmaf(lam, Bv[j], slb);
            vals[VB(j)] = lam * dui;
#else
            const float lb = lam * Bv[j];
            const float gb = seq_gb(d, a, abv);
#if RULE == R_BILINEAR
            const float dx = lam * hp * dabar(abv, x * a);
            gA[j] = fmaf(dx, x, gA[j]);
            sgx = fmaf(dx, a, sgx);
#elif RULE == R_S7
            const float q = fmaf(x, x, 0.5f);
            sgx = fmaf(lam * hp, 2.f * x / (q * q), sgx);
#elif RULE == R_RGLRU
            float dw = mj * hp;
            if (gb > 0.f) dw -= lb * ui * abv * abv / gb;
            gA[j] = fmaf(dw, x / a, gA[j]);
            sgx = fmaf(dw, K.al[j] * 0.6931471805599453f, sgx);
#else
            const float dx = mj * hp;
            gA[j] = fmaf(dx, x, gA[j]);
            sgx = fmaf(dx, a, sgx);
#endif
            sgdu = fmaf(lb, gb, sgdu);
#if RULE == R_ZOH || RULE == R_BILINEAR
            {
                float gbd, gba;
                gbar_partials(d, a, gb, gbd, gba);
                const float dgb = lb * ui;
                sgd = fmaf(dgb, gbd, sgd);
                gA[j] = fmaf(dgb, gba, gA[j]);
            }
#endif
            vals[VB(j)] = lam * gb * ui;
#endif
            vals[VC(j)] = G * hn;
        }
        // dB/dC: xor butterfly over the warp's channels; lane ends with value index lane / SPLIT
        // (the dB/dC sums below). With XPERM the state levels but the last (cnt > 2) keep the
        // low half of every lane's values as they stand (the partner's slots hold the same
        // states there).
        {
            int cnt = VL;
#pragma unroll
            for (int o = 16; o >= SPLIT; o >>= 1) {
                const bool up = lane & o;
                cnt >>= 1;
#pragma unroll
                for (int v = 0; v < VL / 2; v++) {
                    if (v < cnt) {
                        if (XPERM && cnt > 2) {
                            vals[v] += __shfl_xor_sync(FULL, vals[v + cnt], o);
                        } else {
                            const float send = up ? vals[v] : vals[v + cnt];
                            const float keep = up ? vals[v + cnt] : vals[v];
                            vals[v] = keep + __shfl_xor_sync(FULL, send, o);
                        }
                    }
                }
            }
            *seq_slot(sU, sY, sP, ts + i, warp, lane) = vals[0];
        }
        sgx = split_sum(sgx);
#if RULE == R_MAMBA
        slb = split_sum(slb);
        sgdu = slb * d;
        sgd = slb * ui;
#else
        sgd = split_sum(sgd);
        sgdu = split_sum(sgdu);
#endif
#if HAS_Z
        syp = split_sum(syp);
#endif
        if (valid) {
            // ∂L/∂Δ (through γ̄ and, without ΔA, through Ā), then through softplus and bias
            float gd = sgd;
#if !HAS_DTA
            gd += sgx;
#endif
            float draw = gd;
#if SOFTPLUS
            draw *= sS[(ts + i) * SCB + c];  // σ(raw + bias) (seq_delta_tile)
#endif
            gD = fmaf(G, ui, gD);
            gDB += draw;
            // the step's per-channel outputs, in SeqOut order, spread over the channel's lanes
            const float ov[SEQ_NOUT] = {
                fmaf(K.Dd, G, sgdu), draw,
#if HAS_DTA
                sgx,
#endif
#if HAS_Z
                fz[i] * fmaf(K.Dd, ui, syp),
#endif
            };
#pragma unroll
            for (int r = 0; r < SEQ_OUT_R; r++)
                if ((r + 1) * SPLIT <= SEQ_NOUT || r * SPLIT + p < SEQ_NOUT)
                    out.q[r][(size_t)(ts + i) * E] = seq_pick(ov, r, p);
        }
    }
}

extern "C" __global__ void __launch_bounds__(SNT, SEQ_BWD_BLOCKS)
ss_bwd(const float* __restrict__ u, const float* __restrict__ dt, const float* __restrict__ dta,
       const float* __restrict__ A, const float* __restrict__ Bm, const float* __restrict__ Cm,
       const float* __restrict__ Dv, const float* __restrict__ z, const float* __restrict__ dbias,
       const float* __restrict__ dy, const float* __restrict__ hs, float* __restrict__ du,
       float* __restrict__ ddt, float* __restrict__ ddta, float* __restrict__ dz,
       float* __restrict__ pBC, float* __restrict__ pE, int L, int E, int G) {
    extern __shared__ float4 smem4[];
    // per buffer: u, Δ, dy, [ΔA], [z] rows [ST][SCB]; B, C rows [BCC][ST][N]; then the sub-chunk
    // start states [NSUB][NPT][SNT]; with SPLIT = 4 the park area [ST][SWARP][32]; with a
    // softplus the derivatives σ(raw + bias) [ST][SCB] of the current chunk
    constexpr int TILES = 3 + HAS_DTA + HAS_Z;
    constexpr int BUF = TILES * ST * SCB + 2 * BCC * ST * NSTATE;
    float* base = reinterpret_cast<float*>(smem4);
    float* sSub = base + 2 * BUF;
    float* sP = sSub + NSUB * NPT * SNT;
    float* sSig = SOFTPLUS ? sP + (PARK ? ST * SWARP * 32 : 0) : nullptr;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int c = tid / SPLIT, p = tid % SPLIT;
    const int b = blockIdx.y, e0 = blockIdx.x * SCB, e = e0 + c;
    const int g = e0 / (E / G);
    const int nck = (L + ST - 1) / ST;
    const int nblk = gridDim.x;
    // slot j holds state p·NPT + (j ^ xm) (seq_xmask); B/C rows through seq_rows
    const int xm = seq_xmask(lane), pn = p * NPT;
    (void)dta; (void)z; (void)Dv; (void)dbias;

    SeqConst K;
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        K.a[j] = A[(size_t)e * NSTATE + pn + (j ^ xm)];
        K.al[j] = alog2(K.a[j]);
    }
    K.Dd = HAS_D ? Dv[e] : 0.f;
    float m[NPT], gA[NPT], gD = 0.f, gDB = 0.f;
#pragma unroll
    for (int j = 0; j < NPT; j++) { m[j] = 0.f; gA[j] = 0.f; }

    auto stage = [&](int ck) {
        float* s = base + (ck & 1) * BUF;
        const int t0 = ck * ST;
        seq_stage(u, s, b, t0, e0, L, E);
        seq_stage(dt, s + ST * SCB, b, t0, e0, L, E);
        seq_stage(dy, s + 2 * ST * SCB, b, t0, e0, L, E);
#if HAS_DTA
        seq_stage(dta, s + 3 * ST * SCB, b, t0, e0, L, E);
#endif
#if HAS_Z
        seq_stage(z, s + (3 + HAS_DTA) * ST * SCB, b, t0, e0, L, E);
#endif
        seq_stage_bcx(Bm, s + TILES * ST * SCB, b, t0, L, G, g);
        seq_stage_bcx(Cm, s + TILES * ST * SCB + BCC * ST * NSTATE, b, t0, L, G, g);
        cp_commit();
    };
    const float4 bq = seq_bias4(dbias, e0, E);
    stage(nck - 1);
    for (int ck = nck - 1; ck >= 0; ck--) {
        if (ck > 0) {
            stage(ck - 1);
            cp_wait_1();
        } else {
            cp_wait_0();
        }
        seq_delta_tile(base + (ck & 1) * BUF + ST * SCB, sSig, dt, dbias, bq, ck * ST, e0, L, E);
        __syncthreads();
        float* s = base + (ck & 1) * BUF;
        float* sU = s;
        const float* sD = s + ST * SCB;
        float* sY = s + 2 * ST * SCB;
        const float* sDA = s + 3 * ST * SCB;
        const float* sZ = s + (3 + HAS_DTA) * ST * SCB;
        const SeqRows sB = seq_rows(s + TILES * ST * SCB, xm, p);  // this lane's view (seq_ldx)
        const SeqRows sC = seq_rows(s + TILES * ST * SCB + BCC * ST * NSTATE, xm, p);
        const int t0 = ck * ST, nt = min(ST, L - t0);
        const int nsub = (nt + SS - 1) / SS;
        // pass A: the state at every sub-chunk start
        float h[NPT];
#pragma unroll
        for (int j = 0; j < NPT; j++)
            h[j] = hs[(((size_t)b * nck + ck) * NSTATE + pn + (j ^ xm)) * E + e];
        for (int k = 0; k < nsub; k++) {
#pragma unroll
            for (int j = 0; j < NPT; j++) sSub[(k * NPT + j) * SNT + tid] = h[j];
            if (k + 1 == nsub) break;
#pragma unroll
            for (int i = 0; i < SS; i++) {
                const int t = k * SS + i;
                const float uu = sU[t * SCB + c];
                const float d = sD[t * SCB + c];  // Δ (seq_delta_tile)
#if HAS_DTA
                const float x = sDA[t * SCB + c];
#else
                const float x = d;
#endif
                const float dui = d * uu;
                (void)dui;
                float Bv[NPT];
                seq_ldx(sB, t, Bv);
#pragma unroll
                for (int j = 0; j < NPT; j++) {
                    const float abv = abar(x, K.a[j], K.al[j]);
                    h[j] = fmaf(abv, h[j], Bv[j] * seq_gu(d, uu, dui, K.a[j], abv));
                }
            }
        }
        // pass B and the reverse walk, sub-chunks in reverse
        SeqOut out;
        {
            const size_t obase = ((size_t)b * L + t0) * E + e;
            float* const cols[SEQ_NOUT] = {
                du, ddt,
#if HAS_DTA
                ddta,
#endif
#if HAS_Z
                dz,
#endif
            };
#pragma unroll
            for (int r = 0; r < SEQ_OUT_R; r++) out.q[r] = seq_pick(cols, r, p) + obase;
        }
        for (int k = nsub - 1; k >= 0; k--) {
            float h0[NPT];
#pragma unroll
            for (int j = 0; j < NPT; j++) h0[j] = sSub[(k * NPT + j) * SNT + tid];
            const int nv = nt - k * SS;
            if (nv >= SS)
                seq_sub_chunk<false>(K, h0, m, gA, gD, gDB, sU, sD, sDA, sY, sZ, sB, sC, sSig, sP,
                                     warp, k * SS, nv, c, p, lane, out, E);
            else
                seq_sub_chunk<true>(K, h0, m, gA, gD, gDB, sU, sD, sDA, sY, sZ, sB, sC, sSig, sP,
                                    warp, k * SS, nv, c, p, lane, out, E);
        }
        __syncthreads();
        // dB/dC of the chunk: the warps' sums in warp order -> pBC (Bsz, nblk, L, 2N)
        float* dst = pBC + (((size_t)b * nblk + blockIdx.x) * L + t0) * (2 * NSTATE);
        // column v2 of a row (dB_n for v2 < N, else dC_n) is the butterfly sum of lane
        // seq_lane(v2) of every warp, summed in warp order
        auto seq_lane = [](int v2) {
            const int n = v2 % NSTATE;
            return (v2 < NSTATE ? VB(n % NPT) : VC(n % NPT)) * SPLIT + n / NPT;
        };
        auto warp_sum = [&](int t, int ln) {
            float acc = 0.f;
#pragma unroll
            for (int w = 0; w < SWARP; w++) acc += *seq_slot(sU, sY, sP, t, w, ln);
            return acc;
        };
        if (SNT % (2 * NSTATE) == 0) {
            // the thread's column is the same on every row it takes: its lane is set once
            const int v2 = tid % (2 * NSTATE), ln = seq_lane(v2);
            for (int t = tid / (2 * NSTATE); t < nt; t += SNT / (2 * NSTATE))
                dst[t * (2 * NSTATE) + v2] = warp_sum(t, ln);
        } else {
            for (int o = tid; o < nt * 2 * NSTATE; o += SNT)
                dst[o] = warp_sum(o / (2 * NSTATE), seq_lane(o % (2 * NSTATE)));
        }
        __syncthreads();  // this buffer is restaged by the next iteration
    }
    // per-channel sums: [∂A (N) | 0 (N) | 0 (N) | ∂D | ∂delta_bias]
    const int NE = 3 * NSTATE + 2;
    float* pe = pE + ((size_t)b * E + e) * NE;
#pragma unroll
    for (int j = 0; j < NPT; j++) {
        const int n = pn + (j ^ xm);
        pe[n] = gA[j];
        pe[NSTATE + n] = 0.f;
        pe[2 * NSTATE + n] = 0.f;
    }
    if (p == 0) {
        pe[3 * NSTATE] = gD;
        pe[3 * NSTATE + 1] = gDB;
    }
}
