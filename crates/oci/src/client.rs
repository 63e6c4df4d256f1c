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
    #[error("registry credentials: {0}")]
    Credentials(String),
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

/// Credentials from `PERSONA_BUS_OCI_USERNAME` and `PERSONA_BUS_OCI_PASSWORD`
/// (or `PERSONA_BUS_OCI_PASSWORD_FILE`), if a user name is set.
pub fn credentials_from_env() -> Result<Option<Credentials>, OciError> {
    let Ok(username) = std::env::var("PERSONA_BUS_OCI_USERNAME") else {
        return Ok(None);
    };
    let password = match std::env::var("PERSONA_BUS_OCI_PASSWORD_FILE") {
        Ok(file) => std::fs::read_to_string(&file)
            .map_err(|e| {
                OciError::Credentials(format!(
                    "cannot read PERSONA_BUS_OCI_PASSWORD_FILE ({file}): {e}"
                ))
            })?
            .trim_end()
            .to_owned(),
        Err(_) => std::env::var("PERSONA_BUS_OCI_PASSWORD").map_err(|_| {
            OciError::Credentials(
                "PERSONA_BUS_OCI_USERNAME is set: set PERSONA_BUS_OCI_PASSWORD or \
                 PERSONA_BUS_OCI_PASSWORD_FILE too"
                    .into(),
            )
        })?,
    };
    Ok(Some(Credentials { username, password }))
}

/// The registry (`host[:port]`) a reference names.
pub fn registry_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

/// Whether `registry` must be spoken to over plain HTTP: it is on the
/// loopback interface (a registry on the device itself, a test's), or
/// `PERSONA_BUS_OCI_PLAIN_HTTP` (`host:port,...`) names it.
fn plain_http(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
        || std::env::var("PERSONA_BUS_OCI_PLAIN_HTTP")
            .unwrap_or_default()
            .split(',')
            .any(|s| s.trim() == registry)
}

/// A registry error as an operator needs it: the HTTP status when there
/// is one, and what to do about a refusal of credentials.
pub fn describe(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::UnauthorizedError { url } => format!(
            "401 unauthorized at {url}: the registry wants credentials \
             (PERSONA_BUS_OCI_USERNAME and PERSONA_BUS_OCI_PASSWORD or _PASSWORD_FILE) \
             or refused the ones given"
        ),
        E::AuthenticationFailure(m) => format!("401 authentication failed: {m}"),
        E::ImageManifestNotFoundError(m) => format!("404 not found: {m}"),
        E::RegistryError { envelope, url }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    C::ManifestUnknown | C::NameUnknown | C::NotFound | C::BlobUnknown
                )
            }) =>
        {
            format!("404 not found at {url}: {envelope}")
        }
        E::ServerError { code, url, message } => {
            format!("{code} from the registry at {url}: {message}")
        }
        other => format!("{other:#}"),
    }
}

/// [`describe`] of an error from the Wasm client, which wraps the
/// registry's.
fn describe_any(e: &anyhow::Error) -> String {
    e.chain()
        .find_map(|c| c.downcast_ref::<oci_client::errors::OciDistributionError>())
        .map_or_else(|| format!("{e:#}"), describe)
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
            // A registry that stops answering must not hold a host's
            // reload (which runs one at a time) for ever: it then counts
            // as down, and the last good digest keeps running.
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(30)),
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

    /// A client for `registry` (`host[:port]`) as the environment
    /// configures it: credentials from `PERSONA_BUS_OCI_*`, plain HTTP for
    /// loopback and `PERSONA_BUS_OCI_PLAIN_HTTP`, HTTPS otherwise.
    pub fn from_env(registry: &str) -> Result<Self, OciError> {
        let plain: Vec<String> = if plain_http(registry) {
            vec![registry.to_owned()]
        } else {
            Vec::new()
        };
        Self::new(&plain, credentials_from_env()?)
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
                .map_err(|e| fail("push", describe_any(&e)))?;
            self.client
                .fetch_manifest_digest(&r, &self.auth)
                .await
                .map_err(|e| fail("read back the digest", describe(&e)))
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
                message: describe(&e),
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
                message: describe_any(&e),
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
