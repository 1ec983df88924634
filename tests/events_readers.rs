//! The AEDAT 4.0 reader on a real DAVIS346 recording (tests/data/events/davis346.aedat4, MIT,
//! see LICENSE-aedat there): the numbers the recording is published with, and clear errors,
//! never a panic, on truncated or damaged copies of it.

use std::path::Path;

use lrnnx::stream::events::{aedat4, decode, detect, EventError, Format};

fn file() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/events/davis346.aedat4"))
        .unwrap()
}

#[test]
fn real_recording_decodes_to_its_published_numbers() {
    let bytes = file();
    assert_eq!(detect(&bytes, "x").unwrap(), Format::Aedat4);
    let h = aedat4::parse_header(&bytes).unwrap();
    assert_eq!(h.compression, aedat4::Compression::Lz4);
    let kinds: Vec<&str> = h.streams.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["EVTS", "FRME", "IMUS", "TRIG"]);
    let rec = decode(&bytes, "davis346.aedat4").unwrap();
    // 78,830 polarity events, 41,257 ON, over 2.36 s, on a 346 x 260 sensor.
    assert_eq!((rec.width, rec.height), (346, 260));
    assert_eq!(rec.events.len(), 78_830);
    assert_eq!(rec.events.iter().filter(|e| e.on).count(), 41_257);
    assert!((rec.duration_us() as f64 * 1e-6 - 2.36).abs() < 0.005);
    assert!(rec.events.iter().all(|e| e.x < 346 && e.y < 260));
    // Timestamps are absolute (µs since the epoch, 2020-05-11) and never go back here.
    assert!(rec.events.windows(2).all(|w| w[0].t <= w[1].t));
    assert!((1_589_163_000_000_000..1_589_164_000_000_000).contains(&rec.events[0].t));
}

#[test]
fn truncated_copies_are_errors_with_offsets() {
    let bytes = file();
    let n = bytes.len();
    // In the magic line, the header size, the header, the first packet's header and body,
    // packet boundaries, the middle, the packet index, and one byte short of the end.
    let mut cuts = vec![
        0,
        5,
        14,
        16,
        18,
        100,
        3125,
        3126,
        3130,
        3134,
        3200,
        n / 2,
        n - 22_166,
    ];
    cuts.extend((1..40).map(|k| k * (n / 40) + k));
    cuts.extend([n - 22_000, n - 100, n - 1]);
    for cut in cuts {
        match decode(&bytes[..cut], "cut.aedat4") {
            Err(EventError::Truncated { offset, .. }) | Err(EventError::Corrupt { offset, .. }) => {
                assert!(offset <= cut as u64, "cut at {cut}: offset {offset}")
            }
            Err(EventError::UnknownFormat(_)) if cut < 14 => {}
            Ok(r) => panic!(
                "cut at {cut}: decoded {} events without an error",
                r.events.len()
            ),
            Err(e) => panic!("cut at {cut}: unexpected {e}"),
        }
    }
    // A cut inside the header says so, at its offset.
    match decode(&bytes[..100], "cut.aedat4") {
        Err(EventError::Truncated { offset, what, .. }) => {
            assert_eq!(offset, 18);
            assert!(what.contains("IO header"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    // A cut at a packet boundary is caught by the packet index's position.
    match decode(&bytes[..3126], "cut.aedat4") {
        Err(EventError::Truncated { what, .. }) => assert!(what.contains("index"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn damaged_copies_never_panic() {
    let bytes = file();
    let n = bytes.len();
    let mut seed = 12345u64;
    let mut rand = |m: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % m
    };
    let mut errors = 0;
    let trials = 150;
    for k in 0..trials {
        let mut d = bytes.clone();
        // A third in the header (XML description included), the rest anywhere.
        let i = if k % 3 == 0 { rand(3126) } else { rand(n) };
        d[i] ^= 1 << rand(8);
        if k % 5 == 0 {
            let j = rand(n);
            d[j] = d[j].wrapping_add(1 + rand(255) as u8);
        }
        if decode(&d, "damaged.aedat4").is_err() {
            errors += 1;
        }
    }
    // Damage is detected where the format can tell (framing, sizes, ids, the index, an event
    // off the sensor); most of the file is frame-packet pixels and LZ4 data without checksums,
    // where a changed byte is undetectable: only "no panic" is asserted here.
    println!("{errors} of {trials} damaged copies refused");
    // Specific damage: magic, compression code, a packet's stream id and size.
    let mut d = bytes.clone();
    d[3] = b'X';
    assert!(matches!(
        decode(&d, "a.aedat4"),
        Err(EventError::Corrupt { offset: 0, .. })
    ));
    let mut d = bytes.clone();
    d[3126..3130].copy_from_slice(&77i32.to_le_bytes());
    match decode(&d, "a.aedat4") {
        Err(EventError::Corrupt { offset, what, .. }) => {
            assert_eq!(offset, 3126);
            assert!(what.contains("stream 77"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    let mut d = bytes.clone();
    d[3130..3134].copy_from_slice(&(-5i32).to_le_bytes());
    assert!(matches!(
        decode(&d, "a.aedat4"),
        Err(EventError::Corrupt { offset: 3130, .. })
    ));
    let mut d = bytes.clone();
    d[3130..3134].copy_from_slice(&i32::MAX.to_le_bytes());
    assert!(matches!(
        decode(&d, "a.aedat4"),
        Err(EventError::Truncated { offset: 3134, .. })
    ));
}
