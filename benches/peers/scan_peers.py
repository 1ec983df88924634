"""Peers for the GPU selective-scan bench (same sizes as kernels/examples/gpu_bench.rs):
batch 8, length 4096, 2048 channels, state 16, fp32, mamba rule, softplus(delta + bias), D skip,
optional z gate.  Prints fwd and fwd+bwd times in ms on the current GPU.

1. lrnnx's selective_scan_ref restated in PyTorch (spec §4.1): a Python loop over time.  It is
   slow: it is timed on the first STEPS steps and scaled by L/STEPS (said in the output).
2. The same sequential scan under torch.compile (also on STEPS steps, scaled).
3. JAX lax.associative_scan over (Ā, B̄u) pairs (the S5 paper's method) on the full length.

Usage: python scan_peers.py [--steps 128] [--compile-steps 16] [--skip-jax] [--skip-compile]
(torch.compile unrolls the time loop, so its compile time grows with the steps: keep
--compile-steps small to stay inside one device command.)
"""
import argparse, time, math

B, L, E, N = 8, 4096, 2048, 16


def timeit(fn, reps=3, sync=None):
    fn(); sync()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter(); fn(); sync(); best = min(best, time.perf_counter() - t)
    return best * 1e3


def torch_peers(steps, do_compile, do_ref=True, compile_steps=16):
    import torch
    import torch.nn.functional as F
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    def r(*s, lo=-1.0, hi=1.0):
        return (torch.rand(*s, device=dev, generator=g) * (hi - lo) + lo)
    # lrnnx layout: u, delta, z (b, d, L); A (d, n); B, C (b, n, L)
    u, delta, z = r(B, E, L), r(B, E, L, lo=-4, hi=0), r(B, E, L, lo=-2, hi=2)
    A, Bm, Cm = r(E, N, lo=-16, hi=-1), r(B, N, L), r(B, N, L)
    D, dbias = r(E), r(E)

    def ref(u, delta, A, Bm, Cm, D, z, dbias, T):
        # selective_scan_ref, discretization "mamba", delta_softplus=True, variable B/C
        delta = F.softplus(delta[..., :T] + dbias[..., None])
        u_ = u[..., :T]
        dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
        dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, Bm[..., :T], u_)
        x = u.new_zeros(B, E, N)
        ys = []
        for i in range(T):
            x = dA[:, :, i] * x + dBu[:, :, i]
            ys.append(torch.einsum("bdn,bn->bd", x, Cm[:, :, i]))
        y = torch.stack(ys, dim=2) + u_ * D[:, None]
        if z is not None:
            y = y * F.silu(z[..., :T])
        return y

    out = {}
    sync = torch.cuda.synchronize
    for has_z in (False, True):
        zz = z if has_z else None
        runs = ((("pytorch-ref", ref, steps),) if do_ref else ()) + \
            ((("torch.compile", torch.compile(ref, dynamic=False), compile_steps),) if do_compile else ())
        for name, f, nsteps in runs:
            params = [t.clone().requires_grad_(True) for t in (u, delta, A, Bm, Cm, D, dbias)]
            def fwd():
                with torch.no_grad():
                    f(params[0], params[1], params[2], params[3], params[4], params[5], zz, params[6], nsteps)
            def fb():
                y = f(params[0], params[1], params[2], params[3], params[4], params[5], zz, params[6], nsteps)
                y.sum().backward()
            tf = timeit(fwd, sync=sync) * L / nsteps
            tfb = timeit(fb, reps=2, sync=sync) * L / nsteps
            print(f"RESULT {name} z={has_z}: fwd {tf:.3f} ms, fwd+bwd {tfb:.3f} ms "
                  f"(timed on {nsteps} of {L} steps, scaled x{L // nsteps})", flush=True)


def jax_peer():
    import jax, jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    ks = jax.random.split(key, 8)
    # layout (b, L, d) with the scan over axis 1
    u = jax.random.uniform(ks[0], (B, L, E), minval=-1, maxval=1)
    delta = jax.random.uniform(ks[1], (B, L, E), minval=-4, maxval=0)
    z = jax.random.uniform(ks[2], (B, L, E), minval=-2, maxval=2)
    A = jax.random.uniform(ks[3], (E, N), minval=-16, maxval=-1)
    Bm = jax.random.uniform(ks[4], (B, L, N), minval=-1, maxval=1)
    Cm = jax.random.uniform(ks[5], (B, L, N), minval=-1, maxval=1)
    D = jax.random.uniform(ks[6], (E,), minval=-1, maxval=1)
    db = jax.random.uniform(ks[7], (E,), minval=-1, maxval=1)

    def op(a, b):
        a1, b1 = a
        a2, b2 = b
        return a2 * a1, a2 * b1 + b2

    def scan(u, delta, A, Bm, Cm, D, db, z):
        dl = jax.nn.softplus(delta + db)
        dA = jnp.exp(dl[..., None] * A)                       # (B, L, E, N)
        dBu = (dl * u)[..., None] * Bm[:, :, None, :]
        _, h = jax.lax.associative_scan(op, (dA, dBu), axis=1)
        y = jnp.einsum("blen,bln->ble", h, Cm) + u * D
        if z is not None:
            y = y * jax.nn.silu(z)
        return y

    for has_z in (False, True):
        zz = z if has_z else None
        f = jax.jit(lambda u, delta, A, Bm, Cm, D, db: scan(u, delta, A, Bm, Cm, D, db, zz))
        gfn = jax.jit(jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2, 3, 4, 5, 6)))
        args = (u, delta, A, Bm, Cm, D, db)
        def fwd():
            f(*args).block_until_ready()
        def fb():
            jax.block_until_ready(gfn(*args))
        tf = timeit(fwd, sync=lambda: None)
        tfb = timeit(fb, sync=lambda: None)
        print(f"RESULT jax-associative-scan z={has_z}: fwd {tf:.3f} ms, fwd+bwd {tfb:.3f} ms", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=128, help="steps timed for the eager reference")
    ap.add_argument("--compile-steps", type=int, default=16, help="steps timed for torch.compile")
    ap.add_argument("--skip-jax", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-ref", action="store_true", help="skip the eager PyTorch reference")
    a = ap.parse_args()
    if not a.skip_jax:
        try:
            jax_peer()
        except Exception as e:  # a peer failing must not hide the others
            print("jax peer failed:", repr(e))
    try:
        torch_peers(a.steps, not a.skip_compile, not a.skip_ref, a.compile_steps)
    except Exception as e:
        print("torch peers failed:", repr(e))
