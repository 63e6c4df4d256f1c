//! `persona-bus handlers push|pull|sign`: handlers in OCI registries, for
//! authors (see `persona_bus_oci`).
//!
//! Credentials come from `PERSONA_BUS_OCI_USERNAME` and
//! `PERSONA_BUS_OCI_PASSWORD` (or `PERSONA_BUS_OCI_PASSWORD_FILE`), and are
//! never printed. A registry on the loopback interface, or one named in
//! `PERSONA_BUS_OCI_PLAIN_HTTP` (`host:port,...`), is spoken to over plain
//! HTTP; every other over HTTPS.

use anyhow::{Context, bail};
use persona_bus_oci::OciClient;
use std::path::{Path, PathBuf};

/// A client for `reference`'s registry.
pub(crate) fn client_for(reference: &str) -> anyhow::Result<OciClient> {
    Ok(OciClient::from_env(persona_bus_oci::client::registry_of(
        reference,
    ))?)
}

/// The component of `path`: a `.wasm`, a manifest (its component), or a
/// handler folder as `persona-bus new` makes it (its built component).
fn component_of(path: &Path) -> anyhow::Result<PathBuf> {
    if path.extension().is_some_and(|x| x == "wasm") {
        return Ok(path.to_owned());
    }
    if path.extension().is_some_and(|x| x == "toml") {
        return Ok(path.with_extension("wasm"));
    }
    if path.is_dir() {
        let manifests = persona_bus::registry::manifests_in(path)?;
        if let Some(m) = manifests.first() {
            let wasm = m.with_extension("wasm");
            if wasm.exists() {
                return Ok(wasm);
            }
            bail!(
                "{} is not built yet: run `persona-bus handlers build {}` first",
                wasm.display(),
                path.display()
            );
        }
    }
    bail!(
        "{}: expected a .wasm component, a manifest, or a handler folder",
        path.display()
    )
}

/// The component of `path` (see [`component_of`]) and its bytes.
fn read_component(path: &Path) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let wasm_file = component_of(path)?;
    let bytes = std::fs::read(&wasm_file)
        .with_context(|| format!("cannot read {}", wasm_file.display()))?;
    Ok((wasm_file, bytes))
}

pub(crate) fn push(path: &Path, reference: &str) -> anyhow::Result<()> {
    let (wasm_file, wasm) = read_component(path)?;
    let digest = client_for(reference)?.push(reference, wasm)?;
    println!("pushed {} to {reference}", wasm_file.display());
    println!("digest {digest}");
    Ok(())
}

pub(crate) fn pull(reference: &str, output: Option<&Path>) -> anyhow::Result<()> {
    let pulled = client_for(reference)?.pull(reference)?;
    let out = match output {
        Some(p) => p.to_owned(),
        None => {
            let repo = reference.split(['@', ':']).next().unwrap_or(reference);
            let name = repo.rsplit('/').next().unwrap_or("component");
            PathBuf::from(format!("{name}.wasm"))
        }
    };
    std::fs::write(&out, &pulled.wasm)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "pulled {reference} ({} bytes) into {}",
        pulled.wasm.len(),
        out.display()
    );
    println!("digest {}", pulled.digest);
    Ok(())
}

pub(crate) fn sign(target: &str, key: &Path) -> anyhow::Result<()> {
    let key = persona_bus_oci::cosign::load_signing_key(key)?;
    let file = Path::new(target);
    if file.exists() {
        let (wasm_file, bytes) = read_component(file)?;
        let sig_file = persona_bus_oci::cosign::signature_file(&wasm_file);
        std::fs::write(&sig_file, persona_bus_oci::cosign::sign_blob(&key, &bytes))
            .with_context(|| format!("cannot write {}", sig_file.display()))?;
        println!(
            "signed {} into {} (as `cosign sign-blob` does)",
            wasm_file.display(),
            sig_file.display()
        );
        return Ok(());
    }
    let (digest, sig_ref) = client_for(target)?.sign(target, &key)?;
    println!("signed {target} ({digest}): signature at {sig_ref} (as `cosign sign` does)");
    Ok(())
}

pub(crate) fn verify(target: &str, keys: &[PathBuf]) -> anyhow::Result<()> {
    let keys = persona_bus_oci::TrustedKeys::load(keys)?;
    let file = Path::new(target);
    if file.exists() {
        let (wasm_file, bytes) = read_component(file)?;
        let sig_file = persona_bus_oci::cosign::signature_file(&wasm_file);
        let sig = std::fs::read_to_string(&sig_file).map_err(|_| {
            persona_bus_oci::SignatureError::Unsigned(format!("no {}", sig_file.display()))
        })?;
        let signer = keys.verify_blob(&bytes, &sig)?;
        println!("{}: signed by {signer}", wasm_file.display());
        return Ok(());
    }
    let client = client_for(target)?;
    let digest = client.resolve(target)?;
    let signer = client.verify(target, &digest, &keys)?;
    println!("{target} ({digest}): signed by {signer}");
    Ok(())
}
