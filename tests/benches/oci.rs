//! Handlers in OCI registries, measured against the local registry
//! (`make oci-up`): push, pull by digest, and what verification costs at
//! load, for a small Rust component (`rmw`) and a large JavaScript one
//! (`tally-js`, about 12 MB); and the time from pushing (and signing) a
//! new build of a handler to the first event it handles on a host that
//! follows its tag with `poll_secs = 1` and `[trust]` on.
//!
//! ```text
//! cargo bench -p persona-bus-tests --bench oci -- [--rounds N] [--pushes N]
//! ```
//!
//! Each figure is the median of `--rounds` (default 20) runs, with its
//! range; a fresh repository per component. Push-to-first-event is the
//! median of `--pushes` (default 10) pushes, after one untimed.

use persona_bus::event::NewEvent;
use persona_bus_oci::OciClient;
use persona_bus_oci::cosign::{TrustedKeys, load_signing_key, sign_blob};
use persona_bus_tests::{Sandbox, guests};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = persona_bus_tests::rounds(&args, 20);
    let registry =
        std::env::var("PERSONA_BUS_TEST_OCI").unwrap_or_else(|_| "127.0.0.1:5050".into());
    println!("OCI benchmark against {registry}; {rounds} round(s) per figure");
    println!("{}", persona_bus_tests::speed_line());
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = persona_bus_tests::oci::keypair(dir.path(), "k");
    let key = load_signing_key(&private).unwrap();
    let keys = TrustedKeys::load(std::slice::from_ref(&public)).unwrap();
    let client = OciClient::new(std::slice::from_ref(&registry), None).unwrap();
    for (name, wasm) in [("rmw", guests::RMW), ("tally-js", guests::TALLY_JS)] {
        let bytes = std::fs::read(wasm).unwrap();
        let mb = bytes.len() as f64 / (1 << 20) as f64;
        let reference = format!(
            "{registry}/bench{}/{name}:1",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let ms = |f: &mut dyn FnMut()| -> Vec<f64> {
            let mut v: Vec<f64> = (0..rounds)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let push = ms(&mut || {
            client.push(&reference, bytes.clone()).unwrap();
        });
        let digest = client.resolve(&reference).unwrap();
        client.sign(&reference, &key).unwrap();
        let by_digest = format!("{}@{digest}", reference.rsplit_once(':').unwrap().0);
        let pull = ms(&mut || {
            assert_eq!(client.pull(&by_digest).unwrap().wasm.len(), bytes.len());
        });
        let verify = ms(&mut || {
            client.verify(&reference, &digest, &keys).unwrap();
        });
        let sig = sign_blob(&key, &bytes);
        let blob = ms(&mut || {
            keys.verify_blob(&bytes, &sig).unwrap();
        });
        let line = |what: &str, v: &[f64]| {
            println!(
                "  {name} ({mb:.1} MB) {what}: median {:.2} ms ({:.2}-{:.2})",
                persona_bus_tests::median(v),
                v[0],
                v[v.len() - 1]
            )
        };
        line("push", &push);
        line("pull by digest", &pull);
        line("verify its registry signature", &verify);
        line("verify a file signature (hash + ECDSA)", &blob);
    }
    // A release: a new build pushed to the tag, then signed.
    let release = |reference: &str, build: u64| {
        client
            .push(
                reference,
                persona_bus_tests::oci::variant(guests::RMW, build),
            )
            .unwrap();
        client.sign(reference, &key).unwrap();
    };
    follow(&registry, &release, &public, &args);
}

/// Push-to-first-event: a host follows `rmw`'s tag (`poll_secs = 1`,
/// `[trust]` on); each round pushes and signs a new build, then publishes
/// one event at a time until one is handled by the new version.
fn follow(registry: &str, release: &dyn Fn(&str, u64), public: &std::path::Path, args: &[String]) {
    let pushes = persona_bus_tests::arg_number(args, "--pushes", 10) as usize;
    let sb = Sandbox::new();
    let reference = format!(
        "{registry}/bench{}/router:live",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    release(&reference, 0);
    std::fs::write(
        sb.handlers_dir().join("rmw.toml"),
        format!(
            "name = \"rmw\"\nversion = \"1\"\n[oci]\nreference = \"{reference}\"\npoll_secs = 1\n\
             [[subscriptions]]\nevent_type = \"rmw\"\n"
        ),
    )
    .unwrap();
    let mut config = sb.config();
    config.trust.keys = vec![public.to_owned()];
    let bus = persona_bus::Bus::open(config).unwrap();
    bus.start().unwrap();
    let mut n = 0u64;
    let mut handled_by = || {
        n += 1;
        let id = bus
            .publish(NewEvent {
                event_type: "rmw".into(),
                source_type: "system".into(),
                payload: Some(serde_json::json!({ "n": n })),
                ..Default::default()
            })
            .unwrap()
            .id;
        persona_bus_tests::wait_final(&bus, &id, Duration::from_secs(30));
        bus.store().executions(&id).unwrap()[0]
            .handler_version
            .clone()
    };
    let mut serving = handled_by();
    let mut times: Vec<f64> = Vec::new();
    for build in 1..=pushes as u64 {
        let t = Instant::now();
        release(&reference, build);
        loop {
            let v = handled_by();
            if v != serving {
                serving = v;
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no new version");
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "  push + sign to the first event handled by the new build (poll_secs = 1, [trust] on, {pushes} pushes): \
         p50 {:.0} ms ({:.0}-{:.0})",
        persona_bus_tests::median(&times),
        times[0],
        times[times.len() - 1]
    );
    bus.shutdown();
}
