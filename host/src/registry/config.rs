//! `[trust]` and `[oci]`: which components may run, and how components
//! named by an OCI reference are fetched.

use persona_bus_model::settings::{Checked, EnvVar, Invalid, parse_number};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[trust]`: the public keys whose signatures a component needs. Empty
/// (the default): components run unsigned. With keys, a component from the
/// handlers folder needs `name.wasm.sig` (as `cosign sign-blob` writes it)
/// and one from a registry a cosign signature beside it, made by one of
/// them; anything else is refused and its events wait.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// PEM public keys (ECDSA P-256: `cosign.pub`). Env:
    /// `PERSONA_BUS_TRUST_KEYS` (comma-separated).
    pub keys: Vec<PathBuf>,
}

impl TrustConfig {
    pub const ENV: &[EnvVar<Self>] = &[EnvVar {
        name: "PERSONA_BUS_TRUST_KEYS",
        key: "trust.keys",
        help: "public keys (PEM, comma-separated) whose signatures a component needs; none: unsigned components run",
        secret: false,
        set: |s, v, _| {
            s.keys = v
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(PathBuf::from)
                .collect();
            Ok(())
        },
    }];

    /// The keys, read now: a key that cannot be read stops the host at
    /// start rather than refusing every component later.
    pub fn validate(&self) -> Checked {
        persona_bus_oci::TrustedKeys::load(&self.keys)
            .map(drop)
            .map_err(|e| Invalid::new("trust.keys", e.to_string()))
    }
}

/// `[oci]`: components named by an OCI reference (a manifest's `[oci]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OciConfig {
    /// How often a followed tag is checked for a new digest, unless its
    /// manifest says otherwise. Env: `PERSONA_BUS_OCI_POLL_SECS`.
    pub poll_secs: u64,
    /// Pulled components and their signatures, by digest; default
    /// `<data_dir>/oci`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for OciConfig {
    fn default() -> Self {
        Self {
            poll_secs: 60,
            cache_dir: None,
        }
    }
}

impl OciConfig {
    pub const ENV: &[EnvVar<Self>] = &[
        EnvVar {
            name: "PERSONA_BUS_OCI_POLL_SECS",
            key: "oci.poll_secs",
            help: "how often a followed tag is checked for a new digest",
            secret: false,
            set: |s, v, _| {
                s.poll_secs = parse_number(&v, "seconds")?;
                Ok(())
            },
        },
        // Read by the registry client itself (`persona_bus_oci::client`),
        // so that they live in no struct that could be printed.
        EnvVar {
            name: "PERSONA_BUS_OCI_USERNAME",
            key: "(environment only)",
            help: "user name for OCI registries",
            secret: false,
            set: |_, _, _| Ok(()),
        },
        EnvVar {
            name: "PERSONA_BUS_OCI_PASSWORD",
            key: "(environment only)",
            help: "password or token for OCI registries",
            secret: true,
            set: |_, _, _| Ok(()),
        },
        EnvVar {
            name: "PERSONA_BUS_OCI_PASSWORD_FILE",
            key: "(environment only)",
            help: "file holding the OCI registry password (instead of PERSONA_BUS_OCI_PASSWORD)",
            secret: false,
            set: |_, _, _| Ok(()),
        },
        EnvVar {
            name: "PERSONA_BUS_OCI_PLAIN_HTTP",
            key: "(environment only)",
            help: "registries (host:port, comma-separated) spoken to over plain HTTP; loopback always is",
            secret: false,
            set: |_, _, _| Ok(()),
        },
    ];

    pub fn validate(&self) -> Checked {
        if self.poll_secs == 0 {
            return Err(Invalid::new("oci.poll_secs", "must be at least 1"));
        }
        Ok(())
    }
}
