//! Where a handler's outbound HTTP may go: `allowed_outbound_hosts`
//! entries, and a shadow's `[rollout] shadow_outbound_hosts`.

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, where the
/// scheme may be `*`, the host `*` or `*.domain`, and the port `*` (no
/// port: the scheme's default).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRule {
    scheme: String,
    host: String,
    port: Option<u16>,
    any_port: bool,
}

impl OutboundRule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} needs a scheme: https://host, http://host:port"))?;
        if !matches!(scheme, "http" | "https" | "*") {
            return Err(format!("{text:?}: the scheme must be http, https or *"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("{text:?}: a destination has no path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        let (port, any_port) = match port {
            None => (None, false),
            Some("*") => (None, true),
            Some(p) => (
                Some(
                    p.parse()
                        .map_err(|_| format!("{text:?}: {p:?} is not a port"))?,
                ),
                false,
            ),
        };
        Ok(Self {
            scheme: scheme.into(),
            host: host.to_ascii_lowercase(),
            port,
            any_port,
        })
    }

    /// Whether a request to `uri` may go.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else { return false };
        let host = host.to_ascii_lowercase();
        let default = if scheme == "http" { 80 } else { 443 };
        let port = uri.port_u16().unwrap_or(default);
        let scheme_ok = self.scheme == "*" || self.scheme == scheme;
        let host_ok = self.host == "*"
            || self.host == host
            || self
                .host
                .strip_prefix("*.")
                .is_some_and(|d| host.ends_with(&format!(".{d}")));
        let port_ok = self.any_port
            || match self.port {
                Some(p) => p == port,
                None => {
                    port == if self.scheme == "http" {
                        80
                    } else if self.scheme == "https" {
                        443
                    } else {
                        default
                    }
                }
            };
        scheme_ok && host_ok && port_ok
    }
}
