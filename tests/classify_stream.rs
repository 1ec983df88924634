//! The Event-SSM-style classifier streamed event by event equals its parallel forward: a
//! classifier of `lrnnx_train::classifier` (event-mode S5 blocks, LayerNorm, mean pooling
//! between blocks) exported to the core through the network blob and run by
//! `lrnnx_stream::StreamClassifier` over real digit event streams gives, after every event
//! that completes a frame, the logits that the parallel forward computes for that prefix
//! (padded inside a batch of the full sequences, masked by its length); and streaming
//! allocates nothing.

use lrnnx::export_network::{export_network, network_to_blob, read_network_blob};
use lrnnx::stream::{FramePooling, StreamClassifier};
use lrnnx::train::classifier::{
    digit_events, ClassifierConfig, EventClassifier, EventSet, HeadPooling,
};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

fn digits() -> EventSet {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/digits/digits.bin"
    ))
    .unwrap();
    digit_events(&raw).unwrap()
}

fn model(head: HeadPooling) -> EventClassifier {
    let mut cfg = ClassifierConfig::event_s5(3, 10, 16, 8, 3, 2);
    cfg.head = head;
    EventClassifier::new(cfg, 7).unwrap()
}

#[test]
fn streamed_logits_equal_the_parallel_forward_at_every_frame() {
    let set = digits();
    for head in [HeadPooling::Mean, HeadPooling::Last] {
        let m = model(head);
        let f = m.frame_factor();
        assert_eq!(f, 4);
        let core = export_network(m.network()).unwrap();
        let core = read_network_blob(&network_to_blob(&core, 0.0).unwrap())
            .unwrap()
            .network;
        let pooling = match head {
            HeadPooling::Mean => FramePooling::Mean,
            HeadPooling::Last => FramePooling::Last,
        };
        let mut stream = StreamClassifier::from_network(core, pooling);
        assert_eq!(stream.frame_factor(), f);
        for i in [0u32, 1, 2, 1000, 1796] {
            let (x, dt, _) = set.get(i as usize).unwrap();
            let n = dt.len();
            // Every prefix that ends a frame, as a batch padded to the full length.
            let prefixes: Vec<usize> = (f..=n).filter(|k| k % f == 0).collect();
            let (xb, db, _, _) = set.batch(&vec![i; prefixes.len()]).unwrap();
            let want: Vec<Vec<f32>> = m.logits(&xb, &db, &prefixes).unwrap().to_vec2().unwrap();
            stream.reset();
            let mut z = [0f32; 10];
            let mut row = 0;
            for (k, (xe, &te)) in x.chunks_exact(3).zip(dt).enumerate() {
                let framed = stream.push_event(xe, te).unwrap();
                assert_eq!(framed, (k + 1) % f == 0);
                if framed {
                    assert_eq!(stream.logits(&mut z).unwrap(), (k + 1) / f);
                    let w = &want[row];
                    let scale = w.iter().fold(0f32, |s, v| s.max(v.abs()));
                    for (a, b) in z.iter().zip(w) {
                        assert!(
                            (a - b).abs() <= 2e-5 * scale + 1e-6,
                            "{head:?} digit {i} after {} events: {a} vs {b}",
                            k + 1
                        );
                    }
                    row += 1;
                }
            }
            assert_eq!(row, prefixes.len());
            // The whole sequence alone (not padded) gives the last prefix's logits.
            let (xa, da, la, _) = set.batch(&[i]).unwrap();
            let alone: Vec<Vec<f32>> = m.logits(&xa, &da, &la).unwrap().to_vec2().unwrap();
            stream.logits(&mut z).unwrap();
            for (a, b) in z.iter().zip(&alone[0]) {
                assert!((a - b).abs() <= 2e-5 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}

#[test]
fn streaming_allocates_nothing() {
    let set = digits();
    let m = model(HeadPooling::Mean);
    let mut stream =
        StreamClassifier::from_network(export_network(m.network()).unwrap(), FramePooling::Mean);
    let mut z = [0f32; 10];
    let before = allocations();
    for i in 0..50 {
        let (x, dt, _) = set.get(i).unwrap();
        stream.reset();
        for (xe, &te) in x.chunks_exact(3).zip(dt) {
            stream.push_event(xe, te).unwrap();
        }
        stream.logits(&mut z).unwrap();
        std::hint::black_box(stream.predict());
    }
    assert_eq!(allocations(), before, "streaming allocated");
    // The counter works.
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(allocations() > before);
}
