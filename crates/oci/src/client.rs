//! Push and pull of components by reference (`host:port/repo:tag` or
//! `...@sha256:<hex>`), synchronously: the handler registry calls it from
//! its own thread.

use oci_client::client::{ClientConfig, ClientProtocol, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_wasm::{WasmClient, WasmConfig};
use sha2::{Digest, Sha256};

/// Registry credentials: from the environment or a file, never printed.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a registry operation failed; the message names the reference and
/// never a credential.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0:?} is not an OCI reference (host[:port]/repository[:tag|@sha256:digest]): {1}")]
    Reference(String, String),
    #[error("{reference}: {what}: {message}")]
    Registry {
        reference: String,
        what: &'static str,
        message: String,
    },
    #[error("{reference}: the layer's digest is {got}, not {want}: refused")]
    Tampered {
        reference: String,
        want: String,
        got: String,
    },
    #[error("cannot start the registry client: {0}")]
    Io(#[from] std::io::Error),
}

/// A component pulled from a registry.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest's digest (`sha256:<hex>`): what a reference by digest
    /// names, and what a signature signs.
    pub digest: String,
    /// The component's bytes (its layer, checked against its digest).
    pub wasm: Vec<u8>,
}

pub struct OciClient {
    rt: tokio::runtime::Runtime,
    client: WasmClient,
    auth: RegistryAuth,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("sha256:{:x}", h.finalize())
}

pub fn parse_reference(text: &str) -> Result<Reference, OciError> {
    text.parse::<Reference>()
        .map_err(|e| OciError::Reference(text.to_owned(), e.to_string()))
}

impl OciClient {
    /// A client; registries on `plain_http` hosts (`host:port`) are
    /// spoken to over plain HTTP (a registry on the device's own loopback,
    /// a test's), every other over HTTPS.
    pub fn new(plain_http: &[String], credentials: Option<Credentials>) -> Result<Self, OciError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http.to_vec()),
            ..Default::default()
        };
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self {
            rt,
            client: WasmClient::new(Client::new(config)),
            auth,
        })
    }

    /// Pushes a component under `reference`; returns its manifest digest.
    pub fn push(&self, reference: &str, wasm: Vec<u8>) -> Result<String, OciError> {
        let r = parse_reference(reference)?;
        let fail = |what, message: String| OciError::Registry {
            reference: reference.to_owned(),
            what,
            message,
        };
        let (config, layer): (WasmConfig, ImageLayer) = WasmConfig::from_raw_component(wasm, None)
            .map_err(|e| fail("not a component", format!("{e:#}")))?;
        self.rt.block_on(async {
            self.client
                .push(&r, &self.auth, layer, config, None)
                .await
                .map_err(|e| fail("push", format!("{e:#}")))?;
            self.client
                .fetch_manifest_digest(&r, &self.auth)
                .await
                .map_err(|e| fail("read back the digest", e.to_string()))
        })
    }

    /// The manifest digest `reference` names now (a tag moves; a digest
    /// does not).
    pub fn resolve(&self, reference: &str) -> Result<String, OciError> {
        let r = parse_reference(reference)?;
        self.rt
            .block_on(self.client.fetch_manifest_digest(&r, &self.auth))
            .map_err(|e| OciError::Registry {
                reference: reference.to_owned(),
                what: "resolve",
                message: e.to_string(),
            })
    }

    /// Pulls the component `reference` names, its layer checked against
    /// the digest its manifest gives.
    pub fn pull(&self, reference: &str) -> Result<Pulled, OciError> {
        let r = parse_reference(reference)?;
        let data = self
            .rt
            .block_on(self.client.pull(&r, &self.auth))
            .map_err(|e| OciError::Registry {
                reference: reference.to_owned(),
                what: "pull",
                message: format!("{e:#}"),
            })?;
        let digest = data.digest.clone().ok_or_else(|| OciError::Registry {
            reference: reference.to_owned(),
            what: "pull",
            message: "the registry gave no manifest digest".into(),
        })?;
        let layer = data
            .layers
            .into_iter()
            .next()
            .ok_or_else(|| OciError::Registry {
                reference: reference.to_owned(),
                what: "pull",
                message: "no layer".into(),
            })?;
        if let Some(want) = data
            .manifest
            .as_ref()
            .and_then(|m| m.layers.first())
            .map(|l| l.digest.clone())
        {
            let got = sha256_digest(&layer.data);
            if got != want {
                return Err(OciError::Tampered {
                    reference: reference.to_owned(),
                    want,
                    got,
                });
            }
        }
        Ok(Pulled {
            digest,
            wasm: layer.data.to_vec(),
        })
    }

    /// The runtime and client, for the signature operations.
    pub(crate) fn parts(&self) -> (&tokio::runtime::Runtime, &Client, &RegistryAuth) {
        (&self.rt, &self.client, &self.auth)
    }
}
