//! The authoring loop (issue 15, parts 3-4), for Rust, JavaScript and Python:
//! `persona-bus new`, then `handlers build`, then `handlers test` on the
//! sample event, then the built pair dropped into a running host, which
//! handles an event with it.

use crate::cli_with_env;
use persona_bus_tests::{Sandbox, guests, wait_final};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where builds of new handlers go (kept between runs, like the guests').
fn target_dir() -> PathBuf {
    Path::new(guests::COMPILE_CACHE)
        .parent()
        .unwrap()
        .join("authoring-target")
}

/// componentize-py as `make py-handlers` installs it.
fn componentize_py() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/persona-bus/py-venv-componentize-0.25.1/bin/componentize-py")
}

fn author(lang: &str) {
    let sb = Sandbox::new();
    let name = format!("hello-{lang}");
    let dir = sb.root.path().join(&name);
    let componentize = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/js/node_modules/.bin/componentize-js"
    );
    let target = target_dir();
    let componentize_py = componentize_py();
    let env = [
        ("CARGO_TARGET_DIR", target.to_str().unwrap()),
        ("PERSONA_BUS_COMPONENTIZE_JS", componentize),
        (
            "PERSONA_BUS_COMPONENTIZE_PY",
            componentize_py.to_str().unwrap(),
        ),
    ];
    let run = |args: &[&str]| {
        let (ok, out, err) = cli_with_env(&sb, args, &env);
        assert!(ok, "{args:?} failed:\n{out}\n{err}");
        out
    };
    let d = dir.to_str().unwrap();
    run(&["new", &name, "--lang", lang, "--dir", d]);
    let out = run(&["handlers", "build", d]);
    assert!(out.contains(&format!("built {d}/{name}.wasm")), "{out}");
    let manifest = dir.join(format!("{name}.toml"));
    let event = dir.join("event.json");
    let out = run(&[
        "handlers",
        "test",
        manifest.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ]);
    assert!(out.contains("outcome: completed"), "{out}");
    assert!(out.contains("state increment \"seen\" by 1"), "{out}");
    // Several events, in order: in one `handle-batch` call where the
    // template's manifest has [batch] (JavaScript, Python).
    let events = dir.join("events.jsonl");
    let out = run(&[
        "handlers",
        "test",
        manifest.to_str().unwrap(),
        "--event",
        events.to_str().unwrap(),
    ]);
    assert_eq!(out.matches("outcome: completed").count(), 3, "{out}");
    assert!(out.contains("event 3: custom"), "{out}");
    assert_eq!(
        out.matches("state increment \"seen\" by 1").count(),
        3,
        "{out}"
    );
    // Each reads what the one before wrote: the third sees `seen` at 3.
    assert!(out.contains("custom #3 from system"), "{out}");
    let batched = out.contains("one handle-batch call on 3 events");
    assert_eq!(batched, lang != "rust", "{out}");

    // Into a running host, the documented way: copy, then rename.
    let bus = sb.open();
    bus.start().unwrap();
    for file in [format!("{name}.wasm"), format!("{name}.toml")] {
        let tmp = sb.handlers_dir().join(format!(".{file}.tmp"));
        std::fs::copy(dir.join(&file), &tmp).unwrap();
        std::fs::rename(&tmp, sb.handlers_dir().join(&file)).unwrap();
    }
    persona_bus_tests::wait_for(Duration::from_secs(60), "the new handler to load", || {
        bus.registry()
            .snapshot()
            .handlers
            .contains_key(name.as_str())
    });
    let e = bus.publish(persona_bus_tests::event("custom")).unwrap();
    let done = wait_final(&bus, &e.id, Duration::from_secs(30));
    assert_eq!(done.status.as_str(), "completed");
    assert_eq!(bus.store().state_counter(&name, "seen").unwrap(), 1);
}

#[test]
fn a_new_rust_handler_builds_tests_and_runs_in_a_host() {
    author("rust");
}

#[test]
#[ignore = "needs services: make test"]
fn a_new_javascript_handler_builds_tests_and_runs_in_a_host() {
    author("js");
}

#[test]
#[ignore = "needs services: make test"]
fn a_new_python_handler_builds_tests_and_runs_in_a_host() {
    author("python");
}

/// As a new user types it, from the folder `new` was run in, with relative
/// names: `new my-py --lang python`, `handlers build my-py` (with the
/// folder's own `.venv`, which `build` runs from inside the folder), then
/// `handlers test my-py` (the folder, not a name in the handlers folder).
#[test]
fn relative_folders_work_for_build_and_test() {
    let sb = Sandbox::new();
    let cwd = sb.root.path();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::host_binary())
            .current_dir(cwd)
            .env("PERSONA_BUS_HTTP_ADDR", "127.0.0.1:0")
            .env_remove("PERSONA_BUS_COMPONENTIZE_PY")
            .arg("--data-dir")
            .arg(sb.data_dir())
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
        stdout
    };
    run(&["new", "my-py", "--lang", "python"]);
    // The folder's own virtual environment, as a first build leaves it
    // (here: the one `make py-handlers` installed, not a new download).
    let venv = cwd.join("my-py/.venv/bin");
    std::fs::create_dir_all(&venv).unwrap();
    std::os::unix::fs::symlink(componentize_py(), venv.join("componentize-py")).unwrap();
    let out = run(&["handlers", "build", "my-py"]);
    assert!(out.contains("my-py.wasm"), "{out}");
    let out = run(&["handlers", "test", "my-py", "--event", "my-py/event.json"]);
    assert!(out.contains("outcome: completed"), "{out}");
}
