//! Signatures in cosign's format, verified offline against the public keys
//! a host trusts (ECDSA P-256 with SHA-256, keys as PEM `PUBLIC KEY`: what
//! `cosign generate-key-pair` writes to `cosign.pub`).
//!
//! - A pushed component is signed as cosign signs an image: a manifest
//!   tagged `sha256-<hex>.sig` in its repository, whose one layer
//!   (`application/vnd.dev.cosign.simplesigning.v1+json`) is the "simple
//!   signing" payload naming the component's manifest digest, with the
//!   base64 DER signature of that payload in the layer's annotation
//!   `dev.cosignproject.cosign/signature`. `cosign verify --key` accepts
//!   ours and we accept cosign's.
//! - A file in the handlers folder is signed as `cosign sign-blob` signs
//!   one: `name.wasm.sig` beside it holds the base64 DER signature of the
//!   file's bytes.
//!
//! No transparency log is consulted (devices may be offline): trust is the
//! list of keys, nothing else.

use crate::client::{OciClient, OciError, parse_reference, sha256_digest};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use oci_client::client::{Config, ImageLayer};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// Why a component is not trusted, or a key not usable.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SignatureError {
    #[error("unsigned: {0}")]
    Unsigned(String),
    #[error("not signed by a trusted key: {0}")]
    Untrusted(String),
    #[error("the signature is for another component: it names {signed}, this is {actual}")]
    OtherDigest { signed: String, actual: String },
    #[error("{file}: {reason}")]
    Key { file: PathBuf, reason: String },
    #[error("reading the signature failed: {0}")]
    Registry(String),
}

/// The public keys whose signatures a host accepts (`[trust] keys`).
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TrustedKeys").field("keys", &names).finish()
    }
}

/// A key's short name: its file stem and the first 8 bytes of the SHA-256
/// of its public key (`team-a:1f2e...`).
fn key_name(file: &Path, key: &VerifyingKey) -> String {
    let der = key
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .unwrap_or_default();
    let id = sha256_digest(&der);
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{stem}:{}", &id["sha256:".len().."sha256:".len() + 16])
}

impl TrustedKeys {
    /// Reads PEM public keys (cosign.pub, or `openssl pkey -pubout`).
    pub fn load(files: &[PathBuf]) -> Result<Self, SignatureError> {
        let mut keys = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|e| SignatureError::Key {
                file: file.clone(),
                reason: e.to_string(),
            })?;
            let key =
                VerifyingKey::from_public_key_pem(&text).map_err(|e| SignatureError::Key {
                    file: file.clone(),
                    reason: format!("not an ECDSA P-256 public key in PEM: {e}"),
                })?;
            keys.push((key_name(file, &key), key));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted key that made `signature` (base64 DER) over `bytes`.
    fn signer(&self, bytes: &[u8], signature: &str) -> Result<String, SignatureError> {
        let der = B64
            .decode(signature.trim())
            .map_err(|e| SignatureError::Untrusted(format!("the signature is not base64 ({e})")))?;
        let sig = Signature::from_der(&der)
            .or_else(|_| Signature::from_slice(&der))
            .map_err(|_| {
                SignatureError::Untrusted("the signature is not an ECDSA P-256 signature".into())
            })?;
        self.keys
            .iter()
            .find(|(_, key)| key.verify(bytes, &sig).is_ok())
            .map(|(name, _)| name.clone())
            .ok_or_else(|| {
                SignatureError::Untrusted(format!(
                    "no key of [trust] ({}) verifies it: signed by another key, or the component changed after signing",
                    self.keys.len()
                ))
            })
    }

    /// Verifies a file against its `cosign sign-blob` signature; the signer.
    pub fn verify_blob(&self, bytes: &[u8], signature: &str) -> Result<String, SignatureError> {
        self.signer(bytes, signature)
    }

    /// Verifies a simple-signing payload and that it names `digest`.
    pub fn verify_payload(
        &self,
        payload: &[u8],
        signature: &str,
        digest: &str,
    ) -> Result<String, SignatureError> {
        let signer = self.signer(payload, signature)?;
        let signed = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| {
                v["critical"]["image"]["docker-manifest-digest"]
                    .as_str()
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                SignatureError::Untrusted("the signed payload names no digest".into())
            })?;
        if signed != digest {
            return Err(SignatureError::OtherDigest {
                signed,
                actual: digest.to_owned(),
            });
        }
        Ok(signer)
    }
}

/// Reads a PKCS#8 PEM private key (`openssl genpkey -algorithm EC -pkeyopt
/// ec_paramgen_curve:P-256`).
pub fn load_signing_key(file: &Path) -> Result<SigningKey, SignatureError> {
    let text = std::fs::read_to_string(file).map_err(|e| SignatureError::Key {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| SignatureError::Key {
        file: file.to_owned(),
        reason: format!("not an unencrypted PKCS#8 ECDSA P-256 private key in PEM: {e}"),
    })
}

/// `cosign sign-blob`: the base64 DER signature of `bytes`.
pub fn sign_blob(key: &SigningKey, bytes: &[u8]) -> String {
    let sig: DerSignature = key.sign(bytes);
    B64.encode(sig.as_bytes())
}

/// cosign's "simple signing" payload for a component of `repository` with
/// manifest `digest`.
pub fn simple_signing_payload(repository: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": { "docker-reference": repository },
            "image": { "docker-manifest-digest": digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("a JSON value serialises")
}

/// Where a file's `cosign sign-blob` signature lives: beside it, `.sig`
/// appended (`router.wasm.sig`).
pub fn signature_file(wasm: &Path) -> PathBuf {
    let mut name = wasm.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The tag of the signatures of `digest` (`sha256:<hex>` -> `sha256-<hex>.sig`).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

impl OciClient {
    /// Signs the component `reference` names (resolved to its digest) as
    /// `cosign sign --key` does; returns (digest, signature reference).
    pub fn sign(&self, reference: &str, key: &SigningKey) -> Result<(String, String), OciError> {
        let digest = self.resolve(reference)?;
        let r = parse_reference(reference)?;
        let repository = format!("{}/{}", r.registry(), r.repository());
        let payload = simple_signing_payload(&repository, &digest);
        let signature = sign_blob(key, &payload);
        let payload_digest = sha256_digest(&payload);
        let sig_ref = format!("{repository}:{}", signature_tag(&digest));
        let target = parse_reference(&sig_ref)?;
        let layer = ImageLayer::new(
            payload,
            SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
            Some(BTreeMap::from([(
                SIGNATURE_ANNOTATION.to_owned(),
                signature,
            )])),
        );
        let config = Config::oci_v1(
            serde_json::to_vec(&serde_json::json!({
                "architecture": "",
                "os": "",
                "config": {},
                "rootfs": { "type": "layers", "diff_ids": [payload_digest] },
            }))
            .expect("a JSON value serialises"),
            None,
        );
        let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        let (rt, client, auth) = self.parts();
        rt.block_on(client.push(&target, &[layer], config, auth, Some(manifest)))
            .map_err(|e| OciError::Registry {
                reference: sig_ref.clone(),
                what: "push the signature",
                message: crate::client::describe(&e),
            })?;
        Ok((digest, sig_ref))
    }

    /// The trusted key that signed the component of `reference`'s
    /// repository with manifest `digest` (cosign's signature manifest).
    pub fn verify(
        &self,
        reference: &str,
        digest: &str,
        keys: &TrustedKeys,
    ) -> Result<String, SignatureError> {
        keys.verify_signed(&self.signatures(reference, digest)?, digest)
    }

    /// The cosign signatures stored for manifest `digest` in `reference`'s
    /// repository (none: `Unsigned`). Each payload is checked against its
    /// layer digest; whether a trusted key made it is for
    /// [`TrustedKeys::verify_signed`], which needs no registry: a host
    /// keeps these to verify its cached components again offline.
    pub fn signatures(&self, reference: &str, digest: &str) -> Result<Vec<Signed>, SignatureError> {
        let r = parse_reference(reference).map_err(|e| SignatureError::Registry(e.to_string()))?;
        let sig_ref = format!(
            "{}/{}:{}",
            r.registry(),
            r.repository(),
            signature_tag(digest)
        );
        let target =
            parse_reference(&sig_ref).map_err(|e| SignatureError::Registry(e.to_string()))?;
        let (rt, client, auth) = self.parts();
        let manifest = match rt.block_on(client.pull_image_manifest(&target, auth)) {
            Ok((m, _)) => m,
            Err(e) if not_found(&e) => {
                return Err(SignatureError::Unsigned(format!(
                    "no signature at {sig_ref}"
                )));
            }
            Err(e) => {
                return Err(SignatureError::Registry(format!(
                    "{sig_ref}: {}",
                    crate::client::describe(&e)
                )));
            }
        };
        let mut out = Vec::new();
        for layer in manifest
            .layers
            .iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        {
            let Some(signature) = layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            else {
                continue;
            };
            let mut payload = Vec::new();
            rt.block_on(client.pull_blob(&target, layer, &mut payload))
                .map_err(|e| {
                    SignatureError::Registry(format!("{sig_ref}: {}", crate::client::describe(&e)))
                })?;
            if sha256_digest(&payload) != layer.digest {
                return Err(SignatureError::Untrusted(format!(
                    "{sig_ref}: the signed payload does not match its digest"
                )));
            }
            out.push(Signed {
                payload: B64.encode(&payload),
                signature: signature.clone(),
            });
        }
        if out.is_empty() {
            return Err(SignatureError::Unsigned(format!(
                "{sig_ref} holds no cosign signature"
            )));
        }
        Ok(out)
    }
}

/// One cosign signature of a pushed component: the simple-signing payload
/// (base64) and the signature over it (base64 DER).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Signed {
    pub payload: String,
    pub signature: String,
}

impl TrustedKeys {
    /// The trusted key that made one of `signed` over a payload naming
    /// `digest`; else why none did (the last reason).
    pub fn verify_signed(&self, signed: &[Signed], digest: &str) -> Result<String, SignatureError> {
        let mut last = SignatureError::Unsigned("no cosign signature".into());
        for s in signed {
            let Ok(payload) = B64.decode(&s.payload) else {
                last = SignatureError::Untrusted("the signed payload is not base64".into());
                continue;
            };
            match self.verify_payload(&payload, &s.signature, digest) {
                Ok(signer) => return Ok(signer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (SigningKey, VerifyingKey) {
        // A fixed scalar: tests need no randomness.
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let public = *key.verifying_key();
        (key, public)
    }

    fn trusted(key: VerifyingKey) -> TrustedKeys {
        TrustedKeys {
            keys: vec![("test:00".into(), key)],
        }
    }

    #[test]
    fn a_blob_signature_verifies_and_a_changed_blob_does_not() {
        let (key, public) = keypair();
        let sig = sign_blob(&key, b"component");
        let keys = trusted(public);
        assert_eq!(keys.verify_blob(b"component", &sig).unwrap(), "test:00");
        assert!(matches!(
            keys.verify_blob(b"component!", &sig),
            Err(SignatureError::Untrusted(_))
        ));
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let theirs = sign_blob(&other, b"component");
        assert!(matches!(
            keys.verify_blob(b"component", &theirs),
            Err(SignatureError::Untrusted(_))
        ));
    }

    #[test]
    fn a_payload_for_another_digest_is_refused_with_both_digests() {
        let (key, public) = keypair();
        let payload = simple_signing_payload("r/x", "sha256:aa");
        let sig = sign_blob(&key, &payload);
        let keys = trusted(public);
        assert!(keys.verify_payload(&payload, &sig, "sha256:aa").is_ok());
        assert_eq!(
            keys.verify_payload(&payload, &sig, "sha256:bb"),
            Err(SignatureError::OtherDigest {
                signed: "sha256:aa".into(),
                actual: "sha256:bb".into()
            })
        );
        assert_eq!(signature_tag("sha256:aa"), "sha256-aa.sig");
    }
}
