//! Handlers in a real OCI registry (`make oci-up`: CNCF Distribution on
//! 127.0.0.1:5050): push and pull by tag and by digest with
//! our commands, and cosign-compatible signatures made by `handlers sign`,
//! verified offline against trusted keys (issue 37, first part).

use crate::cli;
use persona_bus_oci::cosign::TrustedKeys;
use persona_bus_oci::{OciClient, SignatureError};
use persona_bus_tests::oci::{keypair, registry, repository};
use persona_bus_tests::{Sandbox, guests};
use std::path::{Path, PathBuf};
use std::process::Command;

fn client() -> OciClient {
    OciClient::new(&[registry()], None).unwrap()
}

/// The `digest sha256:...` line of a push or pull.
fn digest_in(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("digest "))
        .unwrap_or_else(|| panic!("no digest in {out}"))
        .to_owned()
}

/// `handlers push <component> <reference>`, which must succeed; the
/// digest it prints.
pub(crate) fn push(sb: &Sandbox, component: &str, reference: &str) -> String {
    let (ok, out, err) = cli(sb, &["handlers", "push", component, reference]);
    assert!(ok, "push {reference}: {out}{err}");
    digest_in(&out)
}

/// `handlers sign <target> --key <key>`, which must succeed; all it
/// printed (standard output, then standard error).
pub(crate) fn sign(sb: &Sandbox, target: &str, key: &Path) -> String {
    let (ok, out, err) = cli(
        sb,
        &["handlers", "sign", target, "--key", key.to_str().unwrap()],
    );
    assert!(ok, "sign {target}: {out}{err}");
    out + &err
}

#[test]
#[ignore = "needs services: make test"]
fn push_then_pull_by_tag_and_by_digest_gives_the_same_component() {
    let sb = Sandbox::new();
    let reference = format!("{}:1.0.0", repository("rmw"));
    let digest = push(&sb, guests::RMW, &reference);
    assert!(digest.starts_with("sha256:"), "{digest}");
    let original = std::fs::read(guests::RMW).unwrap();
    for r in [
        reference.clone(),
        format!(
            "{}@{digest}",
            reference.split(':').take(2).collect::<Vec<_>>().join(":")
        ),
    ] {
        let file = sb.root.path().join("pulled.wasm");
        let (ok, out, err) = cli(&sb, &["handlers", "pull", &r, "-o", file.to_str().unwrap()]);
        assert!(ok, "{r}: {out}{err}");
        assert_eq!(digest_in(&out), digest, "{r}");
        assert_eq!(std::fs::read(&file).unwrap(), original, "{r}");
    }
    // The library agrees, and a tag resolves to the digest.
    assert_eq!(client().resolve(&reference).unwrap(), digest);
    // A missing tag is a clear error that names it.
    let missing = format!("{}:nope", repository("rmw"));
    let (ok, _, err) = cli(&sb, &["handlers", "pull", &missing]);
    assert!(!ok);
    assert!(err.contains(&missing) && err.contains("pull"), "{err}");
}

#[test]
#[ignore = "needs services: make test"]
fn a_signed_component_verifies_with_its_key_only_and_only_for_its_digest() {
    let sb = Sandbox::new();
    let dir = sb.root.path();
    let (private, public) = keypair(dir, "team");
    let (_, stranger) = keypair(dir, "stranger");
    let reference = format!("{}:1", repository("rmw"));
    let digest = push(&sb, guests::RMW, &reference);
    let keys = TrustedKeys::load(std::slice::from_ref(&public)).unwrap();
    let c = client();
    // Unsigned first.
    assert!(matches!(
        c.verify(&reference, &digest, &keys),
        Err(SignatureError::Unsigned(_))
    ));
    let out = sign(&sb, &reference, &private);
    assert!(out.contains(&digest), "{out}");
    let signer = c.verify(&reference, &digest, &keys).unwrap();
    assert!(signer.starts_with("team:"), "{signer}");
    // Another key's list does not accept it.
    let others = TrustedKeys::load(&[stranger]).unwrap();
    assert!(matches!(
        c.verify(&reference, &digest, &others),
        Err(SignatureError::Untrusted(_))
    ));
    // A new component under the same tag has another digest: unsigned.
    let changed = push(&sb, guests::NOOP, &reference);
    assert_ne!(changed, digest);
    assert!(matches!(
        c.verify(&reference, &changed, &keys),
        Err(SignatureError::Unsigned(_))
    ));
    // No key material in what the commands print.
    let key_text = std::fs::read_to_string(&private).unwrap();
    let body = key_text.lines().nth(1).unwrap();
    assert!(!out.contains(body), "key material printed");
}

#[test]
fn a_file_signature_is_cosign_sign_blob_and_breaks_when_the_file_changes() {
    let sb = Sandbox::new();
    let dir = sb.root.path();
    let (private, public) = keypair(dir, "team");
    let wasm = dir.join("rmw.wasm");
    std::fs::copy(guests::RMW, &wasm).unwrap();
    sign(&sb, wasm.to_str().unwrap(), &private);
    let sig = std::fs::read_to_string(dir.join("rmw.wasm.sig")).unwrap();
    let keys = TrustedKeys::load(&[public]).unwrap();
    let bytes = std::fs::read(&wasm).unwrap();
    assert!(keys.verify_blob(&bytes, &sig).unwrap().starts_with("team:"));
    // openssl, knowing nothing of us, verifies it too (DER ECDSA, SHA-256).
    let der = dir.join("sig.der");
    std::fs::write(&der, base64_decode(sig.trim())).unwrap();
    let status = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("team.pub"))
        .arg("-signature")
        .arg(&der)
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let mut changed = bytes.clone();
    changed.push(0);
    assert!(matches!(
        keys.verify_blob(&changed, &sig),
        Err(SignatureError::Untrusted(_))
    ));
}

fn base64_decode(text: &str) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["base64", "-d", "-A"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    out.stdout
}

/// A tool `make oci-tools` built (`scripts/oci-tools.sh`).
fn tool(name: &str, version: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    let bin = cache
        .join("persona-bus")
        .join(format!("{name}-{version}"))
        .join("bin")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `make oci-tools`",
        bin.display()
    );
    bin
}

fn run(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{} {args:?}: {text}", bin.display());
    text
}

#[test]
#[ignore = "needs services: make test"]
fn components_travel_both_ways_between_our_commands_and_wkg() {
    let wkg = tool("wkg", "0.16.1");
    let sb = Sandbox::new();
    let dir = sb.root.path();
    let insecure = registry();
    // Ours -> wkg.
    let ours = format!("{}:1", repository("echo"));
    push(&sb, guests::ECHO, &ours);
    let got = dir.join("by-wkg.wasm");
    run(
        &wkg,
        &[
            "oci",
            "pull",
            "--insecure",
            &insecure,
            &ours,
            "-o",
            got.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(guests::ECHO).unwrap()
    );
    // wkg -> ours, and the pulled component loads as a handler.
    let theirs = format!("{}:1", repository("echo"));
    run(
        &wkg,
        &[
            "oci",
            "push",
            "--insecure",
            &insecure,
            &theirs,
            guests::ECHO,
        ],
        &[],
    );
    let handlers = dir.join("pulled");
    std::fs::create_dir_all(&handlers).unwrap();
    let wasm = handlers.join("echo.wasm");
    let (ok, out, err) = cli(
        &sb,
        &["handlers", "pull", &theirs, "-o", wasm.to_str().unwrap()],
    );
    assert!(ok, "{out}{err}");
    std::fs::write(
        handlers.join("echo.toml"),
        "name = \"echo\"\nversion = \"1\"\n[[subscriptions]]\nevent_type = \"e\"\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&sb, &["handlers", "validate", handlers.to_str().unwrap()]);
    assert!(ok && out.contains("ok     echo 1"), "{out}{err}");
}

#[test]
#[ignore = "needs services: make test"]
fn signatures_verify_both_ways_between_our_commands_and_cosign() {
    let cosign = tool("cosign", "v2.6.5");
    let sb = Sandbox::new();
    let dir = sb.root.path();
    let (private, public) = keypair(dir, "team");
    let env = [("COSIGN_PASSWORD", ""), ("COSIGN_YES", "true")];
    // cosign's own key pair (its encrypted private key format).
    let out = Command::new(&cosign)
        .current_dir(dir)
        .args(["generate-key-pair"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cosign_pub = dir.join("cosign.pub");
    let cosign_key = dir.join("cosign.key");

    // Signed by us, verified by cosign.
    let reference = format!("{}:1", repository("rmw"));
    let digest = push(&sb, guests::RMW, &reference);
    sign(&sb, &reference, &private);
    let by_digest = format!("{}@{digest}", reference.rsplit_once(':').unwrap().0);
    run(
        &cosign,
        &[
            "verify",
            "--key",
            public.to_str().unwrap(),
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            &by_digest,
        ],
        &env,
    );

    // Signed by cosign, verified by us.
    let other = format!("{}:1", repository("noop"));
    let other_digest = push(&sb, guests::NOOP, &other);
    let other_by_digest = format!("{}@{other_digest}", other.rsplit_once(':').unwrap().0);
    run(
        &cosign,
        &[
            "sign",
            "--key",
            cosign_key.to_str().unwrap(),
            "--tlog-upload=false",
            "--allow-insecure-registry",
            &other_by_digest,
        ],
        &env,
    );
    let keys = TrustedKeys::load(std::slice::from_ref(&cosign_pub)).unwrap();
    let signer = client().verify(&other, &other_digest, &keys).unwrap();
    assert!(signer.starts_with("cosign:"), "{signer}");
    let (ok, out, err) = cli(
        &sb,
        &[
            "handlers",
            "verify",
            &other,
            "--key",
            cosign_pub.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("signed by cosign:"), "{out}{err}");
    let (ok, _, err) = cli(
        &sb,
        &[
            "handlers",
            "verify",
            &other,
            "--key",
            public.to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("not signed by a trusted key"), "{err}");

    // Blobs: ours verified by cosign verify-blob, cosign's by us.
    let wasm = dir.join("rmw.wasm");
    std::fs::copy(guests::RMW, &wasm).unwrap();
    sign(&sb, wasm.to_str().unwrap(), &private);
    run(
        &cosign,
        &[
            "verify-blob",
            "--key",
            public.to_str().unwrap(),
            "--insecure-ignore-tlog=true",
            "--signature",
            dir.join("rmw.wasm.sig").to_str().unwrap(),
            wasm.to_str().unwrap(),
        ],
        &env,
    );
    let theirs = dir.join("by-cosign.sig");
    run(
        &cosign,
        &[
            "sign-blob",
            "--key",
            cosign_key.to_str().unwrap(),
            "--tlog-upload=false",
            "--output-signature",
            theirs.to_str().unwrap(),
            wasm.to_str().unwrap(),
        ],
        &env,
    );
    let sig = std::fs::read_to_string(&theirs).unwrap();
    assert!(
        keys.verify_blob(&std::fs::read(&wasm).unwrap(), &sig)
            .unwrap()
            .starts_with("cosign:")
    );
}
