//! Stepping events through the pipeline allocates nothing: a counting global allocator watches
//! S5 (Event-SSM) and Mamba (STREAM) over real events.

use std::path::Path;

use lrnnx::export::export;
use lrnnx::stream::events::{read_file, EventPipeline, EventTiming};
use lrnnx::train::candle_core::{DType, Device};
use lrnnx::train::init::{init_params, Rng};
use serde_json::json;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(allocations() > before);
}

#[test]
fn stepping_events_allocates_nothing() {
    let rec =
        read_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/events/davis346.aedat4"))
            .unwrap();
    let events = &rec.events[..5000];
    for (class, kw) in [
        (
            "lrnnx.models.ltv.s5.S5",
            json!({"d_model": 16, "d_state": 16}),
        ),
        (
            "lrnnx.models.ltv.s5.S5",
            json!({"d_model": 6, "d_state": 5}),
        ),
        ("lrnnx.models.ltv.mamba.Mamba", json!({"d_model": 16})),
    ] {
        let params = init_params(class, &kw, &mut Rng::new(1), DType::F32, &Device::Cpu).unwrap();
        let core = export(class, &kw, &params).unwrap();
        let layer = core.as_event_layer().unwrap();
        let mut pipe =
            EventPipeline::new(layer, rec.width, rec.height, EventTiming::default()).unwrap();
        let mut out = vec![0.0f32; events.len() * layer.d_output()];
        let before = allocations();
        for e in events {
            std::hint::black_box(pipe.step(e).unwrap());
        }
        pipe.reset();
        pipe.run(events, &mut out).unwrap();
        pipe.reset();
        pipe.run_last(events).unwrap();
        assert_eq!(
            allocations(),
            before,
            "{class} {kw} allocated while stepping"
        );
    }
}
