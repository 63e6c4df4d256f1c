//! A real OpenTelemetry Collector (built by `scripts/otelcol.sh`: the OTLP
//! receiver and the contrib file exporter) for the trace tests and the
//! tracing benchmark: one per test, on its own port, writing what it
//! receives to a file this module reads back.

use crate::kafka::free_port;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The collector binary (`PERSONA_BUS_OTELCOL` overrides).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PERSONA_BUS_OTELCOL") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/persona-bus/otelcol-0.161.0/persona-otelcol")
}

/// One span as the collector wrote it.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
    pub attributes: Value,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.as_array()?.iter().find_map(|a| {
            (a["key"] == key).then(|| {
                let v = &a["value"];
                // OTLP JSON writes 64-bit integers as strings.
                v["stringValue"]
                    .as_str()
                    .or(v["intValue"].as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| v["intValue"].to_string())
            })
        })
    }
}

/// A collector on 127.0.0.1; killed on drop.
pub struct Collector {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Collector {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("otelcol.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
                 exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
                 service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
                dir.path().join("traces.jsonl").display()
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("otelcol.log")).unwrap())
            .spawn()
            .expect("the OpenTelemetry Collector (make otelcol builds it)");
        let c = Self { child, port, dir };
        crate::wait_for(Duration::from_secs(30), "the collector to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        c
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for hosts sending here.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        let text =
            std::fs::read_to_string(self.dir.path().join("traces.jsonl")).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue; // a line being written
            };
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or("")
                    .to_owned();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        out.push(SpanRecord {
                            service: service.clone(),
                            trace_id: s["traceId"].as_str().unwrap_or("").to_owned(),
                            span_id: s["spanId"].as_str().unwrap_or("").to_owned(),
                            parent: s["parentSpanId"].as_str().unwrap_or("").to_owned(),
                            name: s["name"].as_str().unwrap_or("").to_owned(),
                            attributes: s["attributes"].clone(),
                        });
                    }
                }
            }
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
