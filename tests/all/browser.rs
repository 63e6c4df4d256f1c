//! The dashboard in a real browser (headless Chromium via playwright-core):
//! see `tests/browser/dashboard.mjs`. `make test` installs both (Debian's
//! `chromium`, npm's `playwright-core` in tools/js).

use crate::http::Server;
use persona_bus_tests::{Sandbox, guests};
use std::process::Command;

const TOKEN: &str = "dashboard-token";

#[test]
#[ignore = "needs services: make test"]
fn dashboard_charts_filters_detail_and_dead_letter_actions() {
    let sb = Sandbox::new();
    sb.install_shipped("audit", guests::AUDIT, guests::AUDIT_MANIFEST);
    sb.install(
        "trap",
        guests::TRAP,
        "[[subscriptions]]\nevent_type = \"boom\"\n[retry]\nmax_attempts = 1",
    );
    // A shadow of audit (the same component as another version), for the
    // handler page.
    let dir = sb.handlers_dir();
    std::fs::copy(guests::AUDIT, dir.join("audit.next.wasm")).unwrap();
    std::fs::write(
        dir.join("audit.next.toml"),
        "name = \"audit\"\nversion = \"0.2.0\"\n[rollout]\nshadow = true\n",
    )
    .unwrap();
    let handlers = dir.to_str().unwrap().to_owned();
    let s = Server::start(sb, |c| {
        c.http.token = Some(TOKEN.into());
        // History samples often enough to fill a chart during the test.
        c.http.history_sample_ms = 200;
    });
    // A replay of audit over a few events, for the replays panel.
    let from = persona_bus::event::now_rfc3339();
    let events: Vec<_> = (0..5)
        .map(|_| persona_bus_tests::event("replayed"))
        .collect();
    s.bus().publish_batch(events).unwrap();
    let store = s.bus().store().clone();
    persona_bus_tests::wait_for(
        std::time::Duration::from_secs(30),
        "the events handled",
        || persona_bus_tests::completed(&store) >= 5,
    );
    let (ok, out, err) = crate::run_in(
        &s.bus().config().data_dir,
        &["replay", "--handler", "audit", "--from", &from],
        &[("PERSONA_BUS_HANDLERS_DIR", &handlers)],
    );
    assert!(ok, "{out}{err}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/dashboard.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(&s.base)
        .arg(TOKEN)
        .output()
        .expect("node (Node.js 20) runs the browser test");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "browser test failed (needs /usr/bin/chromium and tools/js/node_modules: `make test` installs them)\n{stdout}\n{stderr}"
    );
    assert!(
        [
            "appeared and completed",
            "charts drew",
            "filters narrowed",
            "detail view showed",
            "retried from the page",
            "purged from the page",
            "redriven by filter",
            "of history",
            "handler page showed",
            "replay listed"
        ]
        .iter()
        .all(|step| stdout.contains(step)),
        "{stdout}"
    );
}
