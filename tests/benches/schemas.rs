//! Per-event cost of payload schemas, for a 10-field payload (the one the
//! Kafka `--schemas` run sends): the check at publish or consume, with a
//! JSON Schema and with an Avro schema (from the folder default, so no
//! registry round trip is in it: lookups are cached either way), and Avro
//! encoding and decoding of the payload (what the relay and the consumer
//! add on the wire). `cargo bench -p persona-bus-tests --bench schemas`.

use persona_bus::config::Config;
use persona_bus::event::{EventLimits, NewEvent};
use persona_bus::schemas::Schemas;
use persona_bus::schemas::avro::AvroSchema;
use persona_bus_tests::registry::{ORDER10_AVRO, ORDER10_JSON, order10};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 20_000 } else { 200_000 };
    let dir = tempfile::tempdir().unwrap();
    for (t, file, text) in [
        ("json.type", "1.json", ORDER10_JSON),
        ("avro.type", "1.avsc", ORDER10_AVRO),
    ] {
        std::fs::create_dir_all(dir.path().join(t)).unwrap();
        std::fs::write(dir.path().join(t).join(file), text).unwrap();
    }
    let mut c = Config::default();
    c.schemas.enabled = true;
    c.schemas.dir = dir.path().to_owned();
    let schemas = Schemas::new(&c);
    // UUIDv4 ids, as producers send, in the payload too.
    let events: Vec<_> = ["json.type", "avro.type"]
        .iter()
        .map(|t| {
            (0..1_000)
                .map(|i| {
                    let id = persona_bus_tests::uuid_v4();
                    NewEvent {
                        event_type: (*t).into(),
                        source_type: "bench".into(),
                        payload: Some(
                            serde_json::from_str(&order10(
                                i,
                                &id,
                                "project-1",
                                "2026-11-28T03:00:00.000000Z",
                            ))
                            .unwrap(),
                        ),
                        ..Default::default()
                    }
                    .validate(
                        EventLimits {
                            max_payload_bytes: 1 << 20,
                        },
                        0,
                    )
                    .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    println!("payload schemas, per event ({n} events, 10-field payload, UUIDv4 ids)");
    let time = |name: &str, f: &mut dyn FnMut(usize)| {
        for i in 0..n / 10 {
            f(i); // warm up
        }
        let mut runs = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            runs.push(t.elapsed() / n as u32);
        }
        runs.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{name:<58} {:>6.2} us  (5 runs: {:.2}-{:.2})",
            us(runs[2]),
            us(runs[0]),
            us(runs[4])
        );
    };
    time(
        "check, JSON Schema (parse the stored payload + validate)",
        &mut |i| {
            black_box(schemas.check(&events[0][i % 1_000])).unwrap();
        },
    );
    time(
        "check, Avro schema (parse the stored payload + fit)",
        &mut |i| {
            black_box(schemas.check(&events[1][i % 1_000])).unwrap();
        },
    );
    let avro = AvroSchema::parse(ORDER10_AVRO).unwrap();
    let values: Vec<serde_json::Value> = events[1]
        .iter()
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect();
    let encoded: Vec<Vec<u8>> = values
        .iter()
        .map(|v| {
            let mut out = Vec::new();
            avro.encode(v, &mut out).unwrap();
            out
        })
        .collect();
    time("Avro encode (relay: value -> bytes)", &mut |i| {
        let mut out = Vec::with_capacity(128);
        avro.encode(&values[i % 1_000], &mut out).unwrap();
        black_box(out);
    });
    time(
        "Avro decode + JSON text (consumer: bytes -> stored payload)",
        &mut |i| {
            black_box(avro.decode(&encoded[i % 1_000]).unwrap().to_string());
        },
    );
    let json_bytes: usize = events[1].iter().map(|e| e.payload.len()).sum();
    let avro_bytes: usize = encoded.iter().map(|e| e.len() + 5).sum();
    println!(
        "payload on the wire: JSON {} bytes, Avro framed {} bytes (average)",
        json_bytes / 1_000,
        avro_bytes / 1_000
    );
}
