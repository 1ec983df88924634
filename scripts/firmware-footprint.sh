#!/usr/bin/env bash
# Footprint and cost of the firmware example on both QEMU boards: flash and RAM from the ELF's
# sections, peak stack (stack painting), instructions per sample of each model, per stage and
# per stage kind (QEMU `-icount shift=0` + SysTick), and the firmware's own check against the
# host's outputs.
#
#   bash scripts/firmware-footprint.sh                      # untrained quickstart denoiser
#   bash scripts/firmware-footprint.sh --model quickstart-out/denoiser.lrnx
#
# The budget (<= 6000 instructions/sample) applies to the denoiser (model DENOISER).
# Needs qemu-system-arm, readelf (binutils) and the rustup targets thumbv7em-none-eabihf and
# thumbv8m.main-none-eabihf. Exits non-zero when a build fails, the firmware reports a
# mismatch, or the model does not fit the boards' memory.x (256 KB flash, 64 KB RAM).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in qemu-system-arm readelf; do
    command -v "$tool" >/dev/null || { echo "firmware-footprint: $tool is required" >&2; exit 1; }
done

# The model, the fixed input and the host's outputs (git-ignored, regenerated every time).
cargo run --release --quiet --example firmware_model -- "$@"

fw=examples/firmware
target_dir=target # relative to $fw; shared with tests/firmware.rs
budget_flash=$((256 * 1024))
budget_ram=$((64 * 1024))
budget_instr=6000

# board: target cpu machine ram_origin
boards=(
    "thumbv7em-none-eabihf cortex-m4 mps2-an386 0x20000000"
    "thumbv8m.main-none-eabihf cortex-m33 mps2-an505 0x38000000"
)

# One image per model: DENOISER (default features; the budget applies to it) and DEMO.
for b in "${boards[@]}"; do
  for image in denoiser demo; do
    read -r target cpu machine ram_origin <<<"$b"
    features=()
    [ "$image" = demo ] && features=(--features demo)
    (cd "$fw" && env -u CARGO_TARGET_DIR cargo build --release --quiet --target "$target" \
        --target-dir "$target_dir" "${features[@]}")
    elf=$fw/$target_dir/$target/release/lrnnx-firmware

    # Sections: alloc sections below the RAM origin are flash; .data is in RAM and its initial
    # image in flash; NOBITS (.bss, .uninit) is RAM only.
    flash=0
    ram_static=0
    while read -r name type addr _off size _es flg _rest; do
        [ "$type" != NULL ] && [[ "$flg" == *A* ]] || continue
        if ((0x$addr >= ram_origin)); then
            ram_static=$((ram_static + 0x$size))
            [ "$type" = NOBITS ] || flash=$((flash + 0x$size))
        else
            flash=$((flash + 0x$size))
        fi
    done < <(readelf -S -W "$elf" | sed -n 's/^ *\[ *[0-9]*\] //p')
    # Symbols: the model's weights and the fixed test data (both in flash).
    read -r weights testdata < <(readelf -s -W "$elf" | awk '
        $4 == "OBJECT" && $8 ~ /_S[0-9]+_WEIGHTS/ { w += $3 }
        $4 == "OBJECT" && $8 ~ /4data[0-9]+[A-Z_]*(_INPUT|_EXPECTED)/ { d += $3 }
        END { print w + 0, d + 0 }')

    out=$(qemu-system-arm -cpu "$cpu" -machine "$machine" -nographic \
        -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" </dev/null) || {
        echo "$out" | grep -v '^y ' >&2
        echo "firmware-footprint: $machine: the firmware failed (mismatch or error)" >&2
        exit 1
    }
    echo "$out" | grep -q '^ok ' || { echo "firmware-footprint: $machine: no ok line" >&2; exit 1; }
    stack=$(echo "$out" | sed -n 's/^stack peak_bytes=\([0-9]*\).*/\1/p')
    ram=$((ram_static + stack))

    echo
    echo "== $machine ($cpu, $target), image $image"
    printf '%-42s %8d bytes (%.1f KB; of which model weights %d, fixed input + expected outputs %d)\n' \
        "flash (.vector_table .text .rodata .data)" "$flash" "$(awk -v b="$flash" 'BEGIN { print b / 1024 }')" "$weights" "$testdata"
    printf '%-42s %8d bytes (static %d + peak stack %d)\n' "RAM" "$ram" "$ram_static" "$stack"
    # Per model: every stage, then the sum per stage kind, then the whole model.
    echo "$out" | awk '
        /^cost model=.* stage=/ {
            split($2, m, "="); split($4, k, "="); split($5, v, "=")
            kind = k[2]; sub(/^Dense.*/, "Dense", kind); sub(/^Residual.*/, "Residual", kind)
            sub(/^(Silu|Gelu|Tanh|Relu|Abs)$/, "Activation", kind); sub(/^GateEnd$/, "Gate", kind)
            if (!((m[2], kind) in sum)) { order[m[2]] = order[m[2]] " " kind }
            sum[m[2], kind] += v[2]; stages[m[2]] = stages[m[2]] " " k[2] "=" v[2]
        }
        /^cost model=.* total / {
            split($2, m, "="); split($4, v, "="); split($5, h, "=")
            printf "%-42s %8s   (SysTick hook %s per stage, subtracted)\n", \
                "instructions per sample, " m[2], v[2], h[2]
            n = split(order[m[2]], ks, " ")
            for (i = 1; i <= n; i++)
                printf "  %-40s %8.1f\n", "per kind, " ks[i], sum[m[2], ks[i]]
            printf "  per stage:%s\n", stages[m[2]]
        }'
    echo "$out" | grep '^calibration' | sed 's/^/(SysTick /; s/$/)/'
    [ "$image" = denoiser ] || continue
    total=$(echo "$out" | sed -n 's/^cost model=DENOISER total instructions_per_sample=\([0-9.]*\).*/\1/p')
    over=()
    [ "$flash" -le "$budget_flash" ] || over+=("flash")
    [ "$ram" -le "$budget_ram" ] || over+=("RAM")
    awk -v t="$total" -v b="$budget_instr" 'BEGIN { exit !(t <= b) }' || over+=("instructions/sample")
    if [ "${#over[@]}" -eq 0 ]; then
        echo "within the issue's target (256 KB flash, 64 KB RAM, <= $budget_instr instructions/sample)"
    else
        echo "over the issue's target (256 KB flash, 64 KB RAM, <= $budget_instr instructions/sample) in: ${over[*]}"
    fi
done
done
