//! GPU correctness of the diagonal linear scan (`lrnnx_kernels::linear`; needs a CUDA device,
//! prints a skip reason and returns without one): both schedules, real and complex, full and
//! shared `a`, against a sequential f64 loop written here (`h` at 1e-5, `∂u`, `∂a` at 1e-4 of the
//! reference's largest value), on shapes that cover states not a multiple of 32, lengths shorter
//! than a chunk and ending mid chunk, one segment and many (four segment targets); the parallel
//! backward run twice gives bitwise identical gradients.
#![cfg(feature = "cuda")]
#![allow(clippy::needless_range_loop)]

mod common;
use common::{f32v, rel, Rng, C64};

use lrnnx_kernels::linear::{LinearScan, LinearSchedule, LinearSpec, PARALLEL_TARGET_BLOCKS};

/// The f64 reference: `h`, `∂u`, `∂a` (module doc of `linear`), interleaved floats.
fn reference(spec: &LinearSpec, a: &[f64], u: &[f64], g: &[f64]) -> [Vec<f64>; 3] {
    let w = if spec.complex { 2 } else { 1 };
    let (b, l, n) = (spec.batch, spec.len, spec.state);
    let get = |v: &[f64], i: usize| {
        if spec.complex {
            C64(v[2 * i], v[2 * i + 1])
        } else {
            C64(v[i], 0.0)
        }
    };
    let put = |v: &mut Vec<f64>, i: usize, x: C64| {
        v[w * i] += x.0;
        if spec.complex {
            v[w * i + 1] += x.1;
        }
    };
    let a_at = |bi: usize, t: usize, k: usize| {
        if spec.shared {
            get(a, k)
        } else {
            get(a, (bi * l + t) * n + k)
        }
    };
    let mut h = vec![0.0; u.len()];
    let mut du = vec![0.0; u.len()];
    let mut da = vec![0.0; spec.da_len()];
    for bi in 0..b {
        for k in 0..n {
            let mut hs = vec![C64(0.0, 0.0); l];
            let mut x = C64(0.0, 0.0);
            for t in 0..l {
                let i = (bi * l + t) * n + k;
                x = a_at(bi, t, k).mul(x).add(get(u, i));
                hs[t] = x;
                put(&mut h, i, x);
            }
            let mut lam = C64(0.0, 0.0);
            for t in (0..l).rev() {
                let i = (bi * l + t) * n + k;
                let next = if t + 1 < l {
                    a_at(bi, t + 1, k).conj().mul(lam)
                } else {
                    C64(0.0, 0.0)
                };
                lam = get(g, i).add(next);
                put(&mut du, i, lam);
                let hp = if t > 0 {
                    hs[t - 1].conj()
                } else {
                    C64(0.0, 0.0)
                };
                let j = if spec.shared { bi * n + k } else { i };
                put(&mut da, j, lam.mul(hp));
            }
        }
    }
    [h, du, da]
}

#[test]
fn schedules_match_f64_reference() {
    if common::no_gpu() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let st = ctx.default_stream();
    let mut scan = LinearScan::with_stream(st.clone());
    // (batch, L, N): one segment and many, N not a multiple of 32, L shorter than a chunk
    let shapes = [
        (1, 1, 1),
        (2, 37, 5),
        (3, 1000, 48),
        (2, 600, 32),
        (1, 16384, 64),
        (4, 4096, 200),
        (40, 300, 512),
    ];
    let mut worst = [0.0f64; 3];
    let mut rng = Rng(17);
    for &(batch, len, state) in &shapes {
        for complex in [false, true] {
            for shared in [false, true] {
                let spec = LinearSpec {
                    batch,
                    len,
                    state,
                    complex,
                    shared,
                };
                let w = if complex { 2 } else { 1 };
                // |a| in [0.5, 0.999]: long memory, stable
                let a: Vec<f64> = (0..spec.a_len() / w)
                    .flat_map(|_| {
                        let m = 0.5 + 0.499 * rng.next();
                        let p = if complex { 0.3 * rng.next() } else { 0.0 };
                        let c = [m * p.cos(), m * p.sin()];
                        c.into_iter().take(w).collect::<Vec<_>>()
                    })
                    .collect();
                let u = rng.vec(spec.full_len(), -1.0, 1.0);
                let g = rng.vec(spec.full_len(), -1.0, 1.0);
                let want = reference(&spec, &a, &u, &g);
                let (da_, du_, dg_) = (
                    st.clone_htod(&f32v(&a)).unwrap(),
                    st.clone_htod(&f32v(&u)).unwrap(),
                    st.clone_htod(&f32v(&g)).unwrap(),
                );
                let mut first_grads = None;
                // the default target twice (bitwise identical gradients), then smaller and
                // larger ones: 1 to 64 segments, 8 and 16 warps a block on these shapes
                for (run, (schedule, target)) in [
                    (LinearSchedule::Sequential, PARALLEL_TARGET_BLOCKS),
                    (LinearSchedule::Parallel, PARALLEL_TARGET_BLOCKS),
                    (LinearSchedule::Parallel, PARALLEL_TARGET_BLOCKS),
                    (LinearSchedule::Parallel, 32),
                    (LinearSchedule::Parallel, 8448),
                    (LinearSchedule::Parallel, 1024),
                ]
                .into_iter()
                .enumerate()
                {
                    scan.schedule = schedule;
                    scan.target_blocks = target;
                    let h = scan.forward(&spec, &da_.as_view(), &du_.as_view()).unwrap();
                    let (ga, gu) = scan
                        .backward(&spec, &da_.as_view(), &h.as_view(), &dg_.as_view())
                        .unwrap();
                    let got = [
                        st.clone_dtoh(&h).unwrap(),
                        st.clone_dtoh(&gu).unwrap(),
                        st.clone_dtoh(&ga).unwrap(),
                    ];
                    let what = format!(
                        "B{batch} L{len} N{state} complex {complex} shared {shared} {schedule:?} \
                         segments {:?} warps {}",
                        spec.segments_for(target),
                        spec.warps_for(target)
                    );
                    for (i, name) in ["h", "du", "da"].iter().enumerate() {
                        let r = rel(&got[i], &want[i]);
                        let tol = if i == 0 { 1e-5 } else { 1e-4 };
                        assert!(r <= tol, "{what} {name}: {r:.3e}");
                        worst[i] = worst[i].max(r);
                    }
                    if run == 1 || run == 2 {
                        match &first_grads {
                            None => first_grads = Some((got[1].clone(), got[2].clone())),
                            Some((gu0, ga0)) => {
                                assert!(
                                    gu0 == &got[1] && ga0 == &got[2],
                                    "{what}: two parallel backward runs differ"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "worst relative error over {} shapes × 4 variants × 2 schedules (4 segment targets): \
         h {:.2e}, du {:.2e}, da {:.2e}",
        shapes.len(),
        worst[0],
        worst[1],
        worst[2]
    );
}
