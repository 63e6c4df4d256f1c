//! Handlers in OCI registries, measured against the local registry
//! (`make oci-up`): push, pull by digest, and what verification costs at
//! load, for a small Rust component (`rmw`) and a large JavaScript one
//! (`tally-js`, about 12 MB).
//!
//! ```text
//! cargo bench -p persona-bus-tests --bench oci -- [--rounds N]
//! ```
//!
//! Each figure is the median of `--rounds` (default 20) runs, with its
//! range; a fresh repository per component.

use persona_bus_oci::OciClient;
use persona_bus_oci::cosign::{TrustedKeys, load_signing_key, sign_blob};
use persona_bus_tests::guests;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = persona_bus_tests::rounds(&args, 20);
    let registry =
        std::env::var("PERSONA_BUS_TEST_OCI").unwrap_or_else(|_| "127.0.0.1:5050".into());
    println!("OCI benchmark against {registry}; {rounds} round(s) per figure");
    println!("{}", persona_bus_tests::speed_line());
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("k.pem");
    let public = dir.path().join("k.pub");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private.to_str().unwrap(),
        ],
        vec![
            "pkey",
            "-pubout",
            "-in",
            private.to_str().unwrap(),
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        assert!(
            std::process::Command::new("openssl")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
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
}
