#!/usr/bin/env bash
# Builds lrnnx-core for a bare-metal Cortex-M4F target (no std there: this proves #![no_std])
# and checks that neither it nor any dependency references the heap allocator (no `alloc`).
set -euo pipefail
target=thumbv7em-none-eabihf
cargo build -p lrnnx-core --release --target "$target"
if grep -rn 'extern crate alloc' lrnnx-core/src; then
    echo "lrnnx-core must not use alloc" >&2
    exit 1
fi
deps=${CARGO_TARGET_DIR:-target}/$target/release/deps
shopt -s nullglob
libs=("$deps"/*.rlib)
if [ "${#libs[@]}" -lt 2 ]; then
    echo "no_std check: expected lrnnx-core and its dependencies in $deps, found ${#libs[@]} rlibs" >&2
    exit 1
fi
command -v nm >/dev/null || { echo "nm (binutils) is required" >&2; exit 1; }
found=0
for lib in "${libs[@]}"; do
    if nm -A "$lib" 2>/dev/null | grep -E '__rust_alloc|__rust_dealloc|__rdl_alloc|__rust_alloc_error_handler'; then
        echo "allocator symbols in $lib" >&2
        found=1
    fi
done
[ "$found" -eq 0 ] || exit 1
echo "no_std check: lrnnx-core and its dependencies (${#libs[@]} rlibs) build for $target and reference no allocator"
