//! What the sections of the host's configuration share: how a section names
//! a key it cannot use, and how an environment variable sets one of its
//! keys. Each section (`[kafka]`, `[store]`, ...) owns its struct, defaults,
//! validation and variables beside its code; the host's `config` combines
//! them into one file and one table of variables.

/// A key of a section that cannot be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// The key as written in the file, e.g. `kafka.brokers`.
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// A section's verdict on itself.
pub type Checked = Result<(), Invalid>;

/// Reads an environment variable (`None`: unset or blank).
pub type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// An environment variable that sets a key of the section `S`.
pub struct EnvVar<S> {
    pub name: &'static str,
    /// The key it overrides, as written in the file.
    pub key: &'static str,
    pub help: &'static str,
    /// Its value is never shown, logged or echoed in an error.
    pub secret: bool,
    /// Sets the key from the variable's (non-blank) value, or says why the
    /// value cannot be used. `Lookup` reads the variables read together
    /// with this one.
    pub set: fn(&mut S, String, &Lookup<'_>) -> Result<(), String>,
}

/// What the docs and `--help` show of a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvDoc {
    pub name: &'static str,
    pub key: &'static str,
    pub help: &'static str,
    pub secret: bool,
}

impl<S> EnvVar<S> {
    pub fn doc(&self) -> EnvDoc {
        EnvDoc {
            name: self.name,
            key: self.key,
            help: self.help,
            secret: self.secret,
        }
    }
}

/// `true`/`false`, also `1`/`0`, `yes`/`no`, `on`/`off`, in any case.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A whole number.
pub fn parse_number<T: std::str::FromStr>(value: &str, unit: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("expected {unit} (a whole number)"))
}
