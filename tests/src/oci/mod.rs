//! What the OCI tests and benchmarks share: the real registry `make oci-up`
//! starts, a repository per run, key pairs, distinct components, and a
//! fault-injecting proxy in front of the registry.

pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The registry `make oci-up` starts (`PERSONA_BUS_TEST_OCI` for another).
pub fn registry() -> String {
    std::env::var("PERSONA_BUS_TEST_OCI").unwrap_or_else(|_| "127.0.0.1:5050".into())
}

/// A repository of its own per test run, on `registry`.
pub fn repository_on(registry: &str, name: &str) -> String {
    format!(
        "{registry}/t{}/{name}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// A repository of its own per test run.
pub fn repository(name: &str) -> String {
    repository_on(&registry(), name)
}

/// An ECDSA P-256 key pair made by openssl: (private PKCS#8 PEM, public PEM).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&private)
        .status()
        .unwrap()
        .success()
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl made no key pair");
    (private, public)
}

/// The component `wasm` with a custom section naming `n` appended: the
/// same code, other bytes, so another digest (a new build of a handler).
pub fn variant(wasm: &str, n: u64) -> Vec<u8> {
    let mut bytes = std::fs::read(wasm).unwrap();
    let name = b"persona-bus-build";
    let data = n.to_le_bytes();
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(&data);
    bytes.push(0); // custom section
    leb128(&mut bytes, payload.len() as u64);
    bytes.extend_from_slice(&payload);
    bytes
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
