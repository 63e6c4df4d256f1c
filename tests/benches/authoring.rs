//! The authoring loop's time (issue 15): from `persona-bus new` to the
//! first event the new handler handles in a running host, per language:
//! `new`, `handlers build`, the copy into the host's handlers folder, its
//! hot reload (compile included) and one event published over HTTP until
//! it is completed. One untimed round per language first warms the build
//! caches (crates downloaded and compiled once, as on a developer's
//! machine); the timed round uses a new handler name.
//!
//!   cargo bench -p persona-bus-tests --bench authoring   (after `make handlers py-handlers`)

use persona_bus_tests::kafka::free_port;
use persona_bus_tests::{guests, wait_for};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = env!("CARGO_BIN_EXE_persona-bus-host");

fn cli(data: &Path, args: &[&str], env: &[(&str, String)]) {
    let out = Command::new(HOST)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (new, build, install to first handled) for one handler.
fn round(lang: &str, name: &str) -> [Duration; 3] {
    let root = tempfile::tempdir().unwrap();
    let (data, handlers) = (root.path().join("data"), root.path().join("handlers"));
    std::fs::create_dir_all(&handlers).unwrap();
    let port = free_port();
    let mut host = Command::new(HOST)
        .arg("--data-dir")
        .arg(&data)
        .args(["run", "--handlers", handlers.to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for(Duration::from_secs(30), "the host", || {
        ureq::get(format!("{base}/ready")).call().is_ok()
    });
    let target = Path::new(guests::COMPILE_CACHE)
        .parent()
        .unwrap()
        .join("authoring-target");
    let home = std::env::var("HOME").unwrap();
    let env = [
        (
            "PERSONA_BUS_COMPONENTIZE_PY",
            format!("{home}/.cache/persona-bus/py-venv-componentize-0.25.1/bin/componentize-py"),
        ),
        ("CARGO_TARGET_DIR", target.display().to_string()),
        (
            "PERSONA_BUS_COMPONENTIZE_JS",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tools/js/node_modules/.bin/componentize-js"
            )
            .into(),
        ),
    ];
    let dir = root.path().join(name);
    let scratch = root.path().join("cli-data");
    let t0 = Instant::now();
    cli(
        &scratch,
        &["new", name, "--lang", lang, "--dir", dir.to_str().unwrap()],
        &env,
    );
    let t1 = Instant::now();
    cli(
        &scratch,
        &["handlers", "build", dir.to_str().unwrap()],
        &env,
    );
    let t2 = Instant::now();
    for file in [format!("{name}.wasm"), format!("{name}.toml")] {
        let tmp = handlers.join(format!(".{file}.tmp"));
        std::fs::copy(dir.join(&file), &tmp).unwrap();
        std::fs::rename(&tmp, handlers.join(&file)).unwrap();
    }
    // Published until one is completed by the new handler (events sent
    // before it loaded are skipped: nobody wanted them).
    wait_for(Duration::from_secs(120), "the first handled event", || {
        let Ok(mut r) = ureq::post(format!("{base}/api/personas/events"))
            .send_json(serde_json::json!({"event_type": "custom", "source_type": "system"}))
        else {
            return false;
        };
        let id = r.body_mut().read_json::<serde_json::Value>().unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        for _ in 0..50 {
            let mut r = ureq::get(format!("{base}/api/personas/events/{id}"))
                .call()
                .unwrap();
            let v: serde_json::Value = r.body_mut().read_json().unwrap();
            match v["event"]["status"].as_str() {
                Some("completed") if !v["runs"].as_array().unwrap().is_empty() => return true,
                Some("pending" | "processing") => std::thread::sleep(Duration::from_millis(20)),
                _ => return false,
            }
        }
        false
    });
    let t3 = Instant::now();
    let _ = host.kill();
    let _ = host.wait();
    [t1 - t0, t2 - t1, t3 - t2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("from `persona-bus new` to the first event handled in a running host\n");
    println!(
        "{:<12} {:>10} {:>10} {:>22} {:>10}",
        "language", "new", "build", "install to handled", "total"
    );
    for lang in ["rust", "js", "python"] {
        round(lang, &format!("warm-{lang}"));
        let [new, build, live] = round(lang, &format!("timed-{lang}"));
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        println!(
            "{:<12} {:>10} {:>10} {:>22} {:>10}",
            lang,
            s(new),
            s(build),
            s(live),
            s(new + build + live)
        );
    }
}
