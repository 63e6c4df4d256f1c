//! Handler secrets: a manifest's `[secrets]` names values taken from the
//! host's environment or from files, never from the manifest itself:
//!
//! ```toml
//! [secrets]
//! github_token = { env = "GITHUB_TOKEN" }
//! signing_key = { file = "/run/secrets/signing-key" }   # relative: to the manifest
//! ```
//!
//! The guest reads one through `config(name)`. The values never reach a
//! log line, an execution row, a dead letter or the dashboard: the host
//! replaces them with `[secret <name>]` in what a handler logs, in its
//! error messages and in the notes of its calls, and `{:?}` prints only
//! the names.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Where a secret comes from, as a manifest writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    file: Option<std::path::PathBuf>,
}

/// A handler's resolved secrets.
#[derive(Default, Clone, PartialEq)]
pub struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// Reads every source; the error names the secret and where it looked
    /// (never a value). `dir` is the manifest's folder.
    pub fn resolve(
        sources: &BTreeMap<String, SecretSource>,
        dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for (name, src) in sources {
            let value = match (&src.env, &src.file) {
                (Some(var), None) => env(var).ok_or_else(|| {
                    format!("secret {name:?}: the environment variable {var} is not set")
                })?,
                (None, Some(file)) => {
                    let path = dir.join(file);
                    std::fs::read_to_string(&path)
                        .map_err(|e| {
                            format!("secret {name:?}: cannot read {}: {e}", path.display())
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned()
                }
                _ => {
                    return Err(format!(
                        "secret {name:?}: give exactly one of env = \"VAR\" or file = \"PATH\""
                    ));
                }
            };
            if value.is_empty() {
                return Err(format!("secret {name:?} is empty"));
            }
            out.insert(name.clone(), value);
        }
        Ok(Self(out))
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// `text` with every secret value replaced by `[secret <name>]`; the
    /// same string, not a copy, when it holds none (the common case: this
    /// runs on every log line a handler writes).
    pub fn scrub(&self, mut text: String) -> String {
        for (name, value) in &self.0 {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), &format!("[secret {name}]"));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_env_or_files_and_are_scrubbed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.txt"), "file-value-42\n").unwrap();
        let sources: BTreeMap<String, SecretSource> =
            toml::from_str("token = { env = \"TOKEN_VAR\" }\nkey = { file = \"key.txt\" }")
                .unwrap();
        let s = Secrets::resolve(&sources, dir.path(), |v| {
            (v == "TOKEN_VAR").then(|| "env-value-7".to_owned())
        })
        .unwrap();
        assert_eq!(s.get("key").as_deref(), Some("file-value-42"));
        assert_eq!(
            s.scrub("got env-value-7 and file-value-42".into()),
            "got [secret token] and [secret key]"
        );
        assert_eq!(format!("{s:?}"), "{\"key\", \"token\"}");
        let missing = Secrets::resolve(&sources, dir.path(), |_| None).unwrap_err();
        assert!(
            missing.contains("TOKEN_VAR") && missing.contains("token"),
            "{missing}"
        );
    }
}
