//! GPU correctness of the batched solve (`lrnnx_kernels::solve`; needs a CUDA device, prints a
//! skip reason and returns without one), against Gaussian elimination with partial pivoting and
//! back substitution in f64 written here (a different algorithm from the kernel's
//! Gauss–Jordan): f32 and f64 operands, the rows in shared memory and forced to the global
//! scratch, the scratch small enough to take several launches; both paths give bitwise equal
//! solutions; singular systems (a zero pivot, a NaN, a non-finite solution) named by their index
//! in the whole batch on either path; empty batches; operand lengths that do not match.
#![cfg(feature = "cuda")]

mod common;
use common::Rng;

use lrnnx_kernels::solve::{BatchedSolve, SolveSpec};

/// `A⁻¹B` of each system by elimination below the pivots and back substitution, in f64.
fn reference(a: &[f64], b: &[f64], (n, m, k): (usize, usize, usize)) -> Vec<f64> {
    let mut x = vec![0.0; n * m * k];
    for s in 0..n {
        let mut u: Vec<f64> = a[s * m * m..(s + 1) * m * m].to_vec();
        let mut r: Vec<f64> = b[s * m * k..(s + 1) * m * k].to_vec();
        for c in 0..m {
            let p = (c..m)
                .max_by(|&i, &j| u[i * m + c].abs().total_cmp(&u[j * m + c].abs()))
                .unwrap();
            for j in 0..m {
                u.swap(c * m + j, p * m + j);
            }
            for j in 0..k {
                r.swap(c * k + j, p * k + j);
            }
            for i in c + 1..m {
                let f = u[i * m + c] / u[c * m + c];
                for j in c..m {
                    u[i * m + j] -= f * u[c * m + j];
                }
                for j in 0..k {
                    r[i * k + j] -= f * r[c * k + j];
                }
            }
        }
        for j in 0..k {
            for i in (0..m).rev() {
                let mut v = r[i * k + j];
                for q in i + 1..m {
                    v -= u[i * m + q] * x[s * m * k + q * k + j];
                }
                x[s * m * k + i * k + j] = v / u[i * m + i];
            }
        }
    }
    x
}

/// The largest difference over the reference's largest value (a NaN fails).
fn rel(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        )
        / scale
}

/// Random dense systems (partial pivoting swaps rows on nearly every column).
fn systems(rng: &mut Rng, (n, m, k): (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
    (rng.vec(n * m * m, -1.0, 1.0), rng.vec(n * m * k, -1.0, 1.0))
}

#[test]
fn solves_match_elimination_on_both_paths() {
    if common::no_gpu() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let st = ctx.default_stream();
    let mut rng = Rng(0x5EED_0123_4567_89AB);
    // (N, M, K): one value; the S4 sizes; rows past one block's threads; rows over the shared
    // limit (global scratch either way)
    for (n, m, k) in [(1, 1, 1), (9, 64, 65), (4, 64, 1), (3, 300, 7), (2, 700, 3)] {
        let (a, b) = systems(&mut rng, (n, m, k));
        let want = reference(&a, &b, (n, m, k));
        let spec = SolveSpec {
            systems: n,
            size: m,
            rhs: k,
        };
        let mut per_path: Vec<Vec<f64>> = Vec::new();
        for (shared, scratch) in [(true, usize::MAX), (false, usize::MAX), (false, 1)] {
            let mut solver = BatchedSolve::with_stream(st.clone());
            solver.shared_memory = shared;
            // 1 byte: one system a launch
            solver.scratch_bytes = scratch;
            // f64 operands
            let (da, db) = (st.clone_htod(&a).unwrap(), st.clone_htod(&b).unwrap());
            let x = solver
                .solve::<f64>(&spec, &da.as_view(), &db.as_view())
                .unwrap()
                .unwrap();
            let x64 = st.clone_dtoh(&x).unwrap();
            let e = rel(&x64, &want);
            println!("N{n} M{m} K{k} shared {shared} scratch {scratch}: f64 rel {e:.2e}");
            assert!(e < 1e-10, "f64 solve off by {e:.2e}");
            per_path.push(x64);
            // f32 operands (rounded), against the reference of the rounded systems
            let (a32, b32): (Vec<f32>, Vec<f32>) = (
                a.iter().map(|&v| v as f32).collect(),
                b.iter().map(|&v| v as f32).collect(),
            );
            let want32 = reference(
                &a32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                &b32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                (n, m, k),
            );
            let (da, db) = (st.clone_htod(&a32).unwrap(), st.clone_htod(&b32).unwrap());
            let x = solver
                .solve::<f32>(&spec, &da.as_view(), &db.as_view())
                .unwrap()
                .unwrap();
            let x32: Vec<f64> = st
                .clone_dtoh(&x)
                .unwrap()
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let e = rel(&x32, &want32);
            assert!(e < 1e-6, "f32 solve off by {e:.2e}");
        }
        assert!(
            per_path.windows(2).all(|w| w[0] == w[1]),
            "the paths' solutions differ"
        );
    }
}

#[test]
fn singular_systems_are_named_and_empty_batches_solve() {
    if common::no_gpu() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let st = ctx.default_stream();
    let mut rng = Rng(77);
    let (n, m, k) = (8usize, 40usize, 2usize);
    let spec = SolveSpec {
        systems: n,
        size: m,
        rhs: k,
    };
    // (zero matrix, NaN in A, infinity in B) systems, and the one to be named
    for (zero, nan, inf, first) in [
        (Some(6), None, None, 6),
        (Some(7), Some(5), None, 5),
        (None, None, Some(3), 3),
        (Some(2), Some(4), Some(1), 1),
    ] {
        let (mut a, mut b) = systems(&mut rng, (n, m, k));
        if let Some(i) = zero {
            a[i * m * m..(i + 1) * m * m].fill(0.0);
        }
        if let Some(i) = nan {
            a[i * m * m + 3 * m + 17] = f64::NAN;
        }
        if let Some(i) = inf {
            b[i * m * k + 5] = f64::INFINITY;
        }
        // shared memory, global scratch in one launch, and one system a launch
        for (shared, scratch) in [(true, usize::MAX), (false, usize::MAX), (false, 1)] {
            let mut solver = BatchedSolve::with_stream(st.clone());
            solver.shared_memory = shared;
            solver.scratch_bytes = scratch;
            let (da, db) = (st.clone_htod(&a).unwrap(), st.clone_htod(&b).unwrap());
            let got = solver
                .solve::<f64>(&spec, &da.as_view(), &db.as_view())
                .unwrap();
            assert_eq!(got.err(), Some(first), "shared {shared} scratch {scratch}");
        }
    }
    // empty batches: Ok, nothing launched
    let solver = BatchedSolve::with_stream(st.clone());
    for (n, m, k) in [(0usize, 3usize, 2usize), (2, 0, 2), (2, 3, 0)] {
        let spec = SolveSpec {
            systems: n,
            size: m,
            rhs: k,
        };
        let da = st.alloc_zeros::<f32>((n * m * m).max(1)).unwrap();
        let db = st.alloc_zeros::<f32>((n * m * k).max(1)).unwrap();
        let got = solver.solve::<f32>(&spec, &da.slice(0..n * m * m), &db.slice(0..n * m * k));
        assert!(matches!(got, Ok(Ok(_))), "({n}, {m}, {k})");
    }
    // wrong lengths and sizes past the kernel's are errors
    let da = st.alloc_zeros::<f32>(10).unwrap();
    let spec = SolveSpec {
        systems: 1,
        size: 3,
        rhs: 1,
    };
    let e = solver
        .solve::<f32>(&spec, &da.slice(0..10), &da.slice(0..3))
        .unwrap_err();
    assert!(e.to_string().contains("`A` holds 10 values"), "{e}");
    let big = SolveSpec {
        systems: 1,
        size: 1025,
        rhs: 1,
    };
    assert!(!big.fits());
    assert!(solver
        .solve::<f32>(&big, &da.slice(0..10), &da.slice(0..3))
        .is_err());
}
