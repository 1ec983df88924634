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
deps=target/$target/release/deps
found=0
for lib in "$deps"/*.rlib; do
    if nm -A "$lib" 2>/dev/null | grep -E '__rust_alloc|__rust_dealloc|__rdl_alloc|__rust_alloc_error_handler'; then
        echo "allocator symbols in $lib" >&2
        found=1
    fi
done
[ "$found" -eq 0 ] || exit 1
echo "no_std check: lrnnx-core and its dependencies build for $target and reference no allocator"
