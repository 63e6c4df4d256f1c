//! Fuzzing every parser that takes outside input: random mutations of seed
//! inputs (bit flips, interesting bytes, insertions, deletions, repeats,
//! tokens of the input's language, splices of two inputs), each run under
//! `catch_unwind`. Inputs a parser accepts join the corpus, so mutations
//! reach past the first error. Not coverage-guided (that needs a nightly
//! compiler for libFuzzer's instrumentation); it runs on stable Rust in
//! `make test` (a few seconds a target) and `make fuzz` (minutes).
//!
//! A crash is a panic (or an input that takes over a second): the input is
//! kept and reported, and belongs in [`REGRESSIONS`] once fixed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// One parser and the inputs its mutations start from.
pub struct Target {
    pub name: &'static str,
    /// Typical valid (and some invalid) inputs.
    pub seeds: Vec<Vec<u8>>,
    /// Tokens of the input's language, inserted whole.
    pub tokens: &'static [&'static str],
    /// Parses one input; true when it was accepted.
    pub run: fn(&[u8]) -> bool,
}

/// What a run found.
pub struct Report {
    pub name: &'static str,
    pub execs: u64,
    pub accepted: u64,
    pub elapsed: Duration,
    pub corpus: usize,
    /// Inputs that panicked, with the panic's message.
    pub crashes: Vec<(Vec<u8>, String)>,
    /// Inputs that took over a second.
    pub slow: Vec<(Vec<u8>, Duration)>,
}

impl Report {
    pub fn line(&self) -> String {
        format!(
            "{:<14} {:>10} execs in {:>6.1} s ({:>7.0}/s), {:>4.1}% accepted, corpus {:>4}, crashes {}, slow {}",
            self.name,
            self.execs,
            self.elapsed.as_secs_f64(),
            self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9),
            100.0 * self.accepted as f64 / self.execs.max(1) as f64,
            self.corpus,
            self.crashes.len(),
            self.slow.len()
        )
    }
}

const MAX_CORPUS: usize = 2_000;
const MAX_INPUT: usize = 64 * 1024;
const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\"'{}[]:,=\\\n\r\t -+.0123456789eE#/*";

/// Mutates and runs `target` for `budget`, from random seed `seed`.
pub fn fuzz(target: &Target, budget: Duration, seed: u64) -> Report {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut corpus: Vec<Vec<u8>> = target.seeds.clone();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut report = Report {
        name: target.name,
        execs: 0,
        accepted: 0,
        elapsed: Duration::ZERO,
        corpus: 0,
        crashes: Vec::new(),
        slow: Vec::new(),
    };
    let quiet = QuietPanics::new();
    let start = Instant::now();
    // The seeds themselves first.
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    while start.elapsed() < budget {
        let input = queue.pop().unwrap_or_else(|| {
            let mut input = corpus[rng.usize(..corpus.len())].clone();
            for _ in 0..=rng.usize(..6) {
                mutate(&mut input, &corpus, target.tokens, &mut rng);
            }
            input
        });
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let took = t.elapsed();
        report.execs += 1;
        match outcome {
            Ok(true) => {
                report.accepted += 1;
                if corpus.len() < MAX_CORPUS && !corpus.contains(&input) {
                    corpus.push(input.clone());
                }
            }
            Ok(false) => {}
            Err(panic) => {
                let message = quiet.last().unwrap_or_else(|| panic_text(&panic));
                if report.crashes.len() < 20 {
                    report.crashes.push((input.clone(), message));
                }
            }
        }
        if took > Duration::from_secs(1) && report.slow.len() < 20 {
            report.slow.push((input, took));
        }
    }
    report.elapsed = start.elapsed();
    report.corpus = corpus.len();
    report
}

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], tokens: &[&str], rng: &mut fastrand::Rng) {
    let len = input.len();
    match rng.u8(..9) {
        0 if len > 0 => {
            let i = rng.usize(..len);
            input[i] ^= 1 << rng.u8(..8);
        }
        1 if len > 0 => {
            let i = rng.usize(..len);
            input[i] = INTERESTING[rng.usize(..INTERESTING.len())];
        }
        2 => {
            let at = rng.usize(..=len);
            let n = rng.usize(1..8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            input.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let a = rng.usize(..len);
            let b = (a + rng.usize(1..32)).min(len);
            input.drain(a..b);
        }
        4 if len > 0 => {
            // Repeat a piece (deep nesting, long strings).
            let a = rng.usize(..len);
            let b = (a + rng.usize(1..16)).min(len);
            let piece = input[a..b].to_vec();
            for _ in 0..rng.usize(1..64) {
                input.splice(a..a, piece.iter().copied());
            }
        }
        5 | 6 if !tokens.is_empty() => {
            let at = boundary(input, rng.usize(..=len));
            let token = tokens[rng.usize(..tokens.len())];
            input.splice(at..at, token.bytes());
        }
        7 if !corpus.is_empty() => {
            let other = &corpus[rng.usize(..corpus.len())];
            let at = rng.usize(..=len);
            let from = rng.usize(..=other.len());
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        _ if len > 0 => input.truncate(rng.usize(..len)),
        _ => input.push(rng.u8(..)),
    }
    input.truncate(MAX_INPUT);
}

/// A nearby position after a newline, where a token makes a new line.
fn boundary(input: &[u8], at: usize) -> usize {
    input[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(at, |i| i + 1)
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Silences the panic hook while fuzzing (thousands of expected panics
/// would flood the output), keeping the last message and where it was.
struct QuietPanics {
    last: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl QuietPanics {
    fn new() -> Self {
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let keep = last.clone();
        std::panic::set_hook(Box::new(move |info| {
            *keep.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.to_string());
        }));
        Self { last }
    }

    fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        let _ = std::panic::take_hook();
    }
}

fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}

/// Every target: the handler manifest, the host config file and its
/// environment variables, the event JSON of the API and CLI, Kafka records
/// (JSON, and the schema-registry framing with Avro bodies), Avro schemas,
/// webhook records and webhook signatures.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "manifest",
            seeds: seeds(&[
                include_str!("../../handlers/router/router.toml"),
                include_str!("../../handlers/counter/counter.toml"),
                include_str!("../../handlers/audit/audit.toml"),
                include_str!("../../handlers/tally-js/tally-js.toml"),
                "name = \"x\"\nversion = \"1\"\n[[subscriptions]]\nevent_type = \"*\"\nsource_filter = \"a-*\"\n[limits]\ntimeout_ms = 5\n[outbound]\nallow = [\"https://api.example.com:8443/v1/*\"]\n[ordering]\n",
            ]),
            tokens: &[
                "[[subscriptions]]\n",
                "[limits]\n",
                "[retry]\n",
                "[instances]\n",
                "[config]\n",
                "[capabilities]\n",
                "[outbound]\n",
                "[secrets]\n",
                "event_type = \"*\"\n",
                "timeout_ms = 0\n",
                "memory_mb = 4294967295\n",
                "max_attempts = 0\n",
                "backoff_ms = 18446744073709551615\n",
                "policy = \"reuse\"\n",
                "allow = [\"*\"]\n",
                "source_filter = \"*\"\n",
                "project = \"\"\n",
                "fuel = -1\n",
                "\"\"\"",
                "'''",
            ],
            run: |input| {
                let limits = persona_bus::config::HostLimits::default();
                persona_bus::manifest::Manifest::parse(
                    std::path::Path::new("fuzz.toml"),
                    &text(input),
                    &limits,
                )
                .is_ok()
            },
        },
        Target {
            name: "config",
            seeds: seeds(&[
                include_str!("../../.env.example"),
                "data_dir = \".data\"\n[store]\nmin_free_mb = 64\n[kafka]\nenabled = true\nbrokers = \"a:9092,b:9092\"\n[kafka.topics.events]\nname = \"e\"\nretention_hours = 1\n[kafka.breaker]\nfailures = 3\n[http]\naddr = \"127.0.0.1:8080\"\n[alerts]\ninterval_ms = 100\n[[alerts.rules]]\nname = \"x\"\nsignal = \"dead_letters\"\nabove = 1\nwindow = \"5m\"\n",
                "[runtime]\nmax_in_flight = 1\nlane_depth = 0\n[limits]\nmax_chain_depth = 99\n[poll]\nbatch_size = 0\n[traces]\nsample = 2.0\n",
            ]),
            tokens: &[
                "[kafka]\n",
                "[store]\n",
                "[runtime]\n",
                "[limits]\n",
                "[http]\n",
                "[poll]\n",
                "[alerts]\n",
                "[[alerts.rules]]\n",
                "[schemas]\n",
                "[traces]\n",
                "[kafka.breaker]\n",
                "[kafka.librdkafka]\n",
                "[http.webhooks.x]\n",
                "enabled = true\n",
                "= 0\n",
                "= -1\n",
                "= 1e999\n",
                "= \"\"\n",
                "window = \"99999999999h\"\n",
                "brokers = \",,\"\n",
            ],
            run: |input| {
                persona_bus::Config::parse(std::path::Path::new("fuzz.toml"), &text(input))
                    .is_ok_and(|c| c.validate().is_ok())
            },
        },
        Target {
            name: "env",
            seeds: seeds(&[
                "KAFKA_ENABLED=true\nKAFKA_BROKERS=a:1,b:2\nKAFKA_REQUIRED=false\n",
                "KAFKA_AUTO_OFFSET_RESET=earliest\nKAFKA_SSL_ENABLED=true\nKAFKA_SASL_USERNAME=u\nKAFKA_SASL_PASSWORD=p\n",
                "PERSONA_BUS_HTTP_ADDR=0.0.0.0:1\nKAFKA_DUAL_WRITE=yes\n",
            ]),
            tokens: &[
                "KAFKA_ENABLED=",
                "KAFKA_BROKERS=",
                "KAFKA_CLIENT_ID=",
                "KAFKA_REQUIRED=",
                "KAFKA_DUAL_WRITE=",
                "KAFKA_CONSUMER_GROUP=",
                "KAFKA_AUTO_OFFSET_RESET=",
                "KAFKA_SASL_USERNAME=",
                "KAFKA_SASL_PASSWORD=",
                "KAFKA_SSL_ENABLED=",
                "PERSONA_BUS_HTTP_ADDR=",
                "OTEL_TRACES_SAMPLER_ARG=",
                "true\n",
                "1\n",
                "\n",
            ],
            run: |input| {
                let text = text(input);
                let vars: std::collections::HashMap<&str, &str> =
                    text.lines().filter_map(|l| l.split_once('=')).collect();
                persona_bus::Config::load(None, |k| vars.get(k).map(|v| (*v).to_owned())).is_ok()
            },
        },
        Target {
            name: "event-json",
            seeds: seeds(&[
                r#"{"event_type":"task_created","source_type":"system","payload":{"a":[1,2,{"b":null}]},"project_id":"p"}"#,
                r#"{"event_type":"x.y-z","source_type":"webhook","source_id":"s","target_persona_id":"t","headers":[["k","v"]],"schema_version":2}"#,
                r#"{"event_type":"","source_type":"system"}"#,
            ]),
            tokens: JSON_TOKENS,
            run: |input| {
                let limits = persona_bus::event::EventLimits {
                    max_payload_bytes: 4096,
                };
                persona_bus::NewEvent::from_json(&text(input))
                    .and_then(|e| e.validate(limits, 0))
                    .is_ok()
            },
        },
        Target {
            name: "kafka-record",
            seeds: seeds(&[
                r#"{"id":"e-1","project_id":"p","event_type":"t","source_type":"system","source_id":null,"target_persona_id":null,"payload":{"n":1},"headers":[],"schema_version":1,"chain_depth":0,"created_at":"2026-11-29T00:00:00Z"}"#,
                r#"{"id":"e-2","project_id":"p","event_type":"t.x","source_type":"webhook","source_id":"s","target_persona_id":"t","payload":[1,"x",null],"headers":[["k","v"]],"schema_version":3,"chain_depth":2,"created_at":"x"}"#,
                "\u{0}\u{0}\u{0}\u{0}\u{1}\u{2}\u{4}",
            ]),
            tokens: JSON_TOKENS,
            run: |input| {
                let schemas = persona_bus::schemas::Schemas::new(&persona_bus::Config::default());
                persona_bus::kafka::wire::decode_record(
                    &schemas,
                    Some(input),
                    || {
                        vec![
                            ("event-id".into(), "e".into()),
                            ("event-type".into(), "t".into()),
                        ]
                    },
                    &"fuzz",
                    true,
                )
                .is_ok()
            },
        },
        Target {
            name: "avro",
            seeds: vec![
                vec![2, 0x06, b'a', b'b', b'c', 0x02, 0x54, 0x00],
                vec![0, 0x02, b'x', 0x01, 0x00],
                Vec::new(),
            ],
            tokens: &["\u{0}", "\u{1}", "\u{7f}", "\u{ff}", "\u{2}\u{2}\u{2}"],
            run: |input| AVRO.with(|schema| schema.decode(input).is_ok()),
        },
        Target {
            name: "avro-schema",
            seeds: seeds(&[
                AVRO_SCHEMA,
                r#"{"type":"record","name":"r","fields":[{"name":"a","type":{"type":"array","items":{"type":"map","values":"long"}}},{"name":"b","type":["null",{"type":"enum","name":"e","symbols":["A","B"]}],"default":null},{"name":"c","type":{"type":"fixed","name":"f","size":4}}]}"#,
                r#""string""#,
            ]),
            tokens: &[
                r#""type":"#,
                r#""record""#,
                r#""fields":[]"#,
                r#""name":"r""#,
                r#""items":"#,
                r#""values":"#,
                r#""symbols":[]"#,
                r#""size":-1"#,
                r#"["null","r"]"#,
                "{",
                "}",
            ],
            run: |input| persona_bus::schemas::avro::AvroSchema::parse(&text(input)).is_ok(),
        },
        Target {
            name: "webhook",
            seeds: seeds(&[
                r#"{"id":"wh-1","trigger_id":"github","project_id":"repo","headers":{"content-type":"application/json"},"body":{"action":"opened"},"received_at":"2026-11-27T09:00:00Z"}"#,
                r#"{"id":"wh-2","trigger_id":"t","body":"plain text","received_at":""}"#,
            ]),
            tokens: JSON_TOKENS,
            run: |input| {
                let limits = persona_bus::event::EventLimits {
                    max_payload_bytes: 4096,
                };
                persona_bus::testing::webhook_to_event(Some(input), limits).is_ok()
            },
        },
        Target {
            name: "signature",
            seeds: vec![
                signed(b"{\"action\":\"opened\"}"),
                b"sha256=00ff\n{}".to_vec(),
                b"\n".to_vec(),
            ],
            tokens: &["sha256=", "sha1=", "=", "\n", "0", "f", "g"],
            run: |input| {
                // The header's value, a newline, then the body.
                let split = input
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(input.len());
                let header = text(&input[..split]);
                let body = input.get(split + 1..).unwrap_or_default();
                persona_bus::testing::verify("fuzz-secret", body, &header).is_ok()
            },
        },
    ]
}

fn seeds(texts: &[&str]) -> Vec<Vec<u8>> {
    texts.iter().map(|t| t.as_bytes().to_vec()).collect()
}

fn signed(body: &[u8]) -> Vec<u8> {
    let mut input = persona_bus::testing::sign("fuzz-secret", body).into_bytes();
    input.push(b'\n');
    input.extend_from_slice(body);
    input
}

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "true",
    "false",
    "-0",
    "1e309",
    "\\u0000",
    "\\ud800",
    "\"payload\":",
    "\"headers\":",
    "\"schema_version\":",
    "\"id\":",
    "\"body\":",
    "\"event_type\":",
    "\"project_id\":",
    "\"chain_depth\":4294967296",
    "\"created_at\":",
];

const AVRO_SCHEMA: &str = r#"{"type":"record","name":"order","fields":[{"name":"id","type":"string"},{"name":"items","type":{"type":"array","items":"long"}},{"name":"note","type":["null","string"],"default":null}]}"#;

thread_local! {
    static AVRO: persona_bus::schemas::avro::AvroSchema =
        persona_bus::schemas::avro::AvroSchema::parse(AVRO_SCHEMA).expect("the fuzz schema parses");
}

/// Inputs that crashed a parser once (name of the target, input), run by
/// the tests so a fix stays fixed.
pub const REGRESSIONS: &[(&str, &[u8])] = &[
    // apache-avro 0.21 unwrapped the check of a record's name.
    (
        "avro-schema",
        br#"{"type":"record","name":"o}rder","fields":[{"name":"id","type":"string"}]}"#,
    ),
];
