//! A client of the Confluent Schema Registry REST API (Confluent's own
//! server, Apicurio's `/apis/ccompat/v7`, Karapace, Redpanda's): the few
//! calls the host and `persona-bus schemas` make.

use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why a registry call failed. `Unreachable` is an outage (retry later);
/// `Refused` is the registry's answer (do not retry).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("schema registry refused ({status}, error {code}): {message}")]
    Refused {
        status: u16,
        code: i64,
        message: String,
    },
    #[error("schema registry answered something unexpected: {0}")]
    Protocol(String),
}

impl RegistryError {
    /// Subject or version not found (Confluent error codes 40401, 40402).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Refused { status: 404, .. })
    }
}

/// A schema as the registry stores it.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub version: u32,
    pub id: u32,
    pub schema: String,
    /// Absent means AVRO (the API's default).
    #[serde(default, rename = "schemaType")]
    pub schema_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Compatibility {
    pub compatible: bool,
    /// The registry's reasons when it is not.
    pub messages: Vec<String>,
}

#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RegistryClient {
    /// `url` is the API root, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`.
    pub fn new(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
        timeout: Duration,
    ) -> Self {
        let auth = username.map(|u| {
            let raw = format!("{u}:{}", password.unwrap_or(""));
            let mut s = String::from("Basic ");
            base64(raw.as_bytes(), &mut s);
            s
        });
        let agent = crate::http_client::agent(timeout);
        Self {
            base: url.trim_end_matches('/').to_owned(),
            auth,
            agent,
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| RegistryError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        };
        let mut response = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url).header("Accept", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (m, body) => {
                let mut r = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                }
                .header("Accept", CONTENT_TYPE)
                .header("Content-Type", CONTENT_TYPE);
                if let Some(a) = &self.auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.unwrap_or_default().to_string())
            }
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| RegistryError::Protocol(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        if status >= 500 && value.get("error_code").is_none() {
            // A proxy or a registry still starting: an outage, not an answer.
            return Err(RegistryError::Unreachable {
                url: self.base.clone(),
                reason: format!("HTTP {status}"),
            });
        }
        Err(RegistryError::Refused {
            status,
            code: value["error_code"].as_i64().unwrap_or(status as i64),
            message: value["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| text.chars().take(300).collect()),
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, RegistryError> {
        serde_json::from_value(v).map_err(|e| RegistryError::Protocol(e.to_string()))
    }

    pub fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        Self::parse(self.call("GET", "/subjects", None)?)
    }

    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        Self::parse(self.call("GET", &format!("/subjects/{}/versions", enc(subject)), None)?)
    }

    /// `version`: a number, or `latest`.
    pub fn version(&self, subject: &str, version: &str) -> Result<Registered, RegistryError> {
        let mut r: Registered = Self::parse(self.call(
            "GET",
            &format!("/subjects/{}/versions/{version}", enc(subject)),
            None,
        )?)?;
        if r.subject.is_empty() {
            r.subject = subject.to_owned();
        }
        Ok(r)
    }

    pub fn by_id(&self, id: u32) -> Result<Registered, RegistryError> {
        let v = self.call("GET", &format!("/schemas/ids/{id}"), None)?;
        Ok(Registered {
            subject: String::new(),
            version: 0,
            id,
            schema: v["schema"]
                .as_str()
                .ok_or_else(|| RegistryError::Protocol(format!("schema {id} has no text")))?
                .to_owned(),
            schema_type: v["schemaType"].as_str().map(str::to_owned),
        })
    }

    /// Registers `schema` under `subject`; the registry checks the subject's
    /// compatibility rule. Returns the schema id.
    pub fn register(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<u32, RegistryError> {
        let v = self.call(
            "POST",
            &format!("/subjects/{}/versions", enc(subject)),
            Some(json!({"schema": schema, "schemaType": schema_type})),
        )?;
        v["id"]
            .as_u64()
            .map(|id| id as u32)
            .ok_or_else(|| RegistryError::Protocol(format!("no id in {v}")))
    }

    /// Whether `schema` is compatible with the subject's latest version under
    /// its rule (true when the subject is new).
    pub fn check(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<Compatibility, RegistryError> {
        let v = self.call(
            "POST",
            &format!(
                "/compatibility/subjects/{}/versions/latest?verbose=true",
                enc(subject)
            ),
            Some(json!({"schema": schema, "schemaType": schema_type})),
        );
        let v = match v {
            Ok(v) => v,
            Err(e) if e.is_not_found() => {
                return Ok(Compatibility {
                    compatible: true,
                    messages: vec![],
                });
            }
            Err(e) => return Err(e),
        };
        let messages = v["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Compatibility {
            compatible: v["is_compatible"].as_bool().unwrap_or(false),
            messages,
        })
    }

    /// Sets the subject's compatibility level (BACKWARD, FORWARD, FULL, NONE,
    /// and their _TRANSITIVE forms).
    pub fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        self.call(
            "PUT",
            &format!("/config/{}", enc(subject)),
            Some(json!({"compatibility": level})),
        )
        .map(|_| ())
    }
}

/// Percent-encodes a subject for a URL path.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(input: &[u8], out: &mut String) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_auth_and_subjects_are_encoded() {
        let mut s = String::new();
        super::base64(b"user:pa55", &mut s);
        assert_eq!(s, "dXNlcjpwYTU1");
        assert_eq!(
            super::enc("persona.events-order:placed"),
            "persona.events-order%3Aplaced"
        );
    }
}
