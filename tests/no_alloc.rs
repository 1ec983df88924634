//! The step path allocates nothing: a counting global allocator watches every layer that the
//! importer can build from the golden cases while it steps through the case's input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use lrnnx::golden::{case_files, Case};
use lrnnx::import::build_core;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 10]);
    drop(v);
    assert!(allocations() > before);
}

#[test]
fn stepping_every_core_layer_allocates_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lrnnx-golden");
    let mut checked = Vec::new();
    for file in case_files(&dir).unwrap() {
        let case = Case::load(&file).unwrap();
        if case.kind() != "module" {
            continue;
        }
        let Ok(model) = build_core(
            case.class(),
            case.ctor_kwargs(),
            &case.file.params("param."),
        ) else {
            continue;
        };
        let layer = model.as_layer();
        let x = &case.tensor("input.x").unwrap().data;
        let mut state = vec![0.0f32; layer.state_len()];
        let mut y = vec![0.0f32; layer.d_output()];
        let before = allocations();
        for xt in x.chunks_exact(layer.d_input()) {
            layer.step(&mut state, xt, &mut y).unwrap();
            if let Some(ev) = model.as_event_layer() {
                ev.step_event(&mut state, xt, 0.7, &mut y).unwrap();
            }
        }
        assert_eq!(
            allocations(),
            before,
            "{} allocated while stepping",
            case.name
        );
        checked.push(case.name.clone());
    }
    println!("stepped without allocation: {checked:?}");
    // Every module case of the golden set (all layer kinds and discretizations).
    assert_eq!(checked.len(), 29, "{checked:?}");
}

/// lrnnx-stream's `process`, `process_block` and `process_event` allocate nothing, on an
/// exported network holding an LTI layer, an event layer and every pointwise stage kind.
#[test]
fn stream_processing_allocates_nothing() {
    use lrnnx::export_network::export_network;
    use lrnnx::stream::Processor;
    use lrnnx::train::candle_core::Device;
    use lrnnx::train::denoiser::causal_denoiser;
    use lrnnx::train::network::{Activation, Network, StageSpec};
    use serde_json::json;

    let mut spec = causal_denoiser(
        "LRU",
        &json!({"d_model": 8, "d_state": 8}),
        8,
        2,
        Activation::Gelu,
    );
    let last = spec.len() - 2;
    spec.insert(
        last,
        StageSpec::Layer {
            class: "lrnnx.models.ltv.mamba.Mamba".into(),
            kwargs: json!({"d_model": 8, "d_state": 4, "d_conv": 4, "expand": 2}),
        },
    );
    let net = Network::new(&spec, 1, 3, &Device::Cpu).unwrap();
    let core = export_network(&net).unwrap();
    let mut p = Processor::new(&core);
    let input: Vec<f32> = (0..512).map(|t| (t as f32 * 0.1).sin()).collect();
    let mut output = vec![0.0f32; 512];
    let before = allocations();
    for (x, y) in input.iter().zip(output.iter_mut()) {
        p.process(std::slice::from_ref(x), std::slice::from_mut(y))
            .unwrap();
    }
    for (x, y) in input.chunks(64).zip(output.chunks_mut(64)) {
        p.process_block(x, y).unwrap();
    }
    for (x, y) in input.iter().zip(output.iter_mut()) {
        p.process_event(std::slice::from_ref(x), 0.5, std::slice::from_mut(y))
            .unwrap();
    }
    p.reset();
    assert_eq!(allocations(), before, "stream processing allocated");
}
