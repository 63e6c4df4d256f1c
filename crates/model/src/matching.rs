//! Which handlers want an event: the original bus's rules, fixed.
//!
//! - Event types compare case-insensitively with `-`, `_` and `.` treated as
//!   the same character, so `Task-Created`, `task_created` and `task.created`
//!   are one type; a `*` in a subscription matches any run of characters
//!   (`task.*`, or `*` for everything).
//! - `source_filter` is either a plain string matched against the event's
//!   `source_id` (exact, or a prefix when it ends in `*`), or the original
//!   JSON object form `{source_type, source_id, payload_type: "a,b",
//!   exclude_system}`.
//! - A set `target_persona_id` restricts delivery to that persona.
//! - A subscriber never receives an event it emitted itself.
//! - Disabled subscriptions and subscriptions for another project are skipped.
//!
//! Loops are stopped by chain depth, which `publish` really counts (the
//! original read it from the wrong place), so the original's 60 s cooldown per
//! (persona, event type) is not needed and not kept.

use crate::event::Event;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A row of `persona_event_subscriptions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subscription {
    pub id: String,
    /// The subscriber: here, a handler's name.
    pub persona_id: String,
    pub event_type: String,
    pub source_filter: Option<String>,
    /// Only events of this project, when set (not in the original table).
    pub project_id: Option<String>,
    pub enabled: bool,
    /// `manifest` for rows written from a handler manifest (rewritten on each
    /// load), `api` for rows created over HTTP.
    pub managed_by: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A source filter that does not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid source_filter {filter:?}: {reason}")]
pub struct FilterError {
    pub filter: String,
    pub reason: String,
}

/// A subscription's `source_filter`, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceFilter {
    Any,
    /// The plain string form: exact, or a prefix when it ends in `*`.
    SourceId(TextPattern),
    /// The original JSON object form.
    Object {
        source_type: Option<String>,
        source_id: Option<TextPattern>,
        /// Accepted values of the payload's `type` field.
        payload_types: Vec<String>,
        exclude_system: bool,
    },
}

/// Exact text, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq)]
pub enum TextPattern {
    Exact(String),
    Prefix(String),
}

impl TextPattern {
    fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(text.to_owned()),
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Self::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (Self::Exact(e), Some(v)) => v == e,
            (_, None) => false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterObject {
    source_type: Option<String>,
    source_id: Option<String>,
    payload_type: Option<String>,
    #[serde(default)]
    exclude_system: bool,
}

impl SourceFilter {
    pub fn parse(text: Option<&str>) -> Result<Self, FilterError> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Self::Any);
        };
        if !text.starts_with('{') {
            return Ok(Self::SourceId(TextPattern::parse(text)));
        }
        let obj: FilterObject = serde_json::from_str(text).map_err(|e| FilterError {
            filter: text.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self::Object {
            source_type: obj.source_type.filter(|s| !s.is_empty()),
            source_id: obj
                .source_id
                .filter(|s| !s.is_empty())
                .map(|s| TextPattern::parse(&s)),
            payload_types: obj
                .payload_type
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            exclude_system: obj.exclude_system,
        })
    }

    fn matches(&self, event: &Event) -> bool {
        match self {
            Self::Any => true,
            Self::SourceId(p) => p.matches(event.source_id.as_deref()),
            Self::Object {
                source_type,
                source_id,
                payload_types,
                exclude_system,
            } => {
                if *exclude_system && event.source_type == "system" {
                    return false;
                }
                if source_type
                    .as_ref()
                    .is_some_and(|t| *t != event.source_type)
                {
                    return false;
                }
                if source_id
                    .as_ref()
                    .is_some_and(|p| !p.matches(event.source_id.as_deref()))
                {
                    return false;
                }
                payload_types.is_empty()
                    || payload_type(&event.payload).is_some_and(|t| payload_types.contains(&t))
            }
        }
    }
}

fn payload_type(payload: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    value.get("type")?.as_str().map(str::to_owned)
}

/// Canonical form of an event type: lower case, with `-`, `_` and `.` all
/// written as `.`.
pub fn normalize_event_type(event_type: &str) -> String {
    event_type
        .chars()
        .map(|c| match c {
            '-' | '_' | '.' => '.',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether a subscription's `pattern` takes `event_type` (both normalized,
/// `*` globs), as the matcher decides it.
pub fn event_type_matches(pattern: &str, event_type: &str) -> bool {
    glob(
        normalize_event_type(pattern).as_bytes(),
        normalize_event_type(event_type).as_bytes(),
    )
}

/// Glob match where `*` stands for any run of characters (also none).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with one backtrack point: linear for the patterns
    // subscriptions use, never exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One enabled subscription, ready to match.
#[derive(Debug, Clone)]
struct Compiled {
    persona_id: Arc<str>,
    event_type: String,
    source: SourceFilter,
    project_id: Option<String>,
}

/// The set of enabled subscriptions, compiled for matching.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    subs: Vec<Compiled>,
}

impl Matcher {
    /// Compiles the enabled subscriptions. A row whose filter does not parse
    /// is skipped with a warning (rows are validated when written, so only a
    /// hand-edited database gets here).
    pub fn new(subscriptions: &[Subscription]) -> Self {
        let subs = subscriptions
            .iter()
            .filter(|s| s.enabled)
            .filter_map(|s| match SourceFilter::parse(s.source_filter.as_deref()) {
                Ok(source) => Some(Compiled {
                    persona_id: Arc::from(s.persona_id.as_str()),
                    event_type: normalize_event_type(&s.event_type),
                    source,
                    project_id: s.project_id.clone(),
                }),
                Err(e) => {
                    tracing::warn!(subscription = %s.id, error = %e, "skipping subscription");
                    None
                }
            })
            .collect();
        Self { subs }
    }

    /// The subscribers that want `event`, each once, in subscription order.
    pub fn subscribers(&self, event: &Event) -> Vec<Arc<str>> {
        let event_type = normalize_event_type(&event.event_type);
        let mut out: Vec<Arc<str>> = Vec::new();
        for sub in &self.subs {
            if out.contains(&sub.persona_id) {
                continue;
            }
            if event
                .target_persona_id
                .as_deref()
                .is_some_and(|t| t != &*sub.persona_id)
            {
                continue;
            }
            if event.source_id.as_deref() == Some(&*sub.persona_id) {
                continue;
            }
            if sub
                .project_id
                .as_ref()
                .is_some_and(|p| *p != event.project_id)
            {
                continue;
            }
            if !glob(sub.event_type.as_bytes(), event_type.as_bytes()) {
                continue;
            }
            if sub.source.matches(event) {
                out.push(sub.persona_id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventLimits, NewEvent};

    fn sub(persona: &str, event_type: &str, filter: Option<&str>) -> Subscription {
        Subscription {
            id: format!("{persona}-{event_type}"),
            persona_id: persona.into(),
            event_type: event_type.into(),
            source_filter: filter.map(Into::into),
            project_id: None,
            enabled: true,
            managed_by: "api".into(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn event(event_type: &str, source_type: &str, source_id: Option<&str>) -> Event {
        NewEvent {
            event_type: event_type.into(),
            source_type: source_type.into(),
            source_id: source_id.map(Into::into),
            ..Default::default()
        }
        .validate(
            EventLimits {
                max_payload_bytes: 1 << 20,
            },
            0,
        )
        .unwrap()
    }

    fn names(m: &Matcher, e: &Event) -> Vec<String> {
        m.subscribers(e).iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn event_types_ignore_case_and_separators() {
        let m = Matcher::new(&[sub("a", "task_created", None)]);
        for t in ["task_created", "Task-Created", "TASK.CREATED"] {
            assert_eq!(names(&m, &event(t, "system", None)), ["a"], "{t}");
        }
        assert!(names(&m, &event("task_updated", "system", None)).is_empty());
    }

    #[test]
    fn globs_match_runs_of_characters() {
        let m = Matcher::new(&[sub("all", "*", None), sub("exec", "execution.*", None)]);
        assert_eq!(
            names(&m, &event("execution_completed", "execution", None)),
            ["all", "exec"]
        );
        assert_eq!(names(&m, &event("custom", "system", None)), ["all"]);
        assert!(glob(b"a*b*c", b"axxbyyc") && !glob(b"a*b*c", b"axxbyy") && glob(b"**", b""));
    }

    #[test]
    fn plain_source_filters_are_exact_or_prefix() {
        let m = Matcher::new(&[
            sub("exact", "custom", Some("watcher-1")),
            sub("wild", "custom", Some("watcher-*")),
        ]);
        assert_eq!(
            names(&m, &event("custom", "trigger", Some("watcher-1"))),
            ["exact", "wild"]
        );
        assert_eq!(
            names(&m, &event("custom", "trigger", Some("watcher-22"))),
            ["wild"]
        );
        assert!(names(&m, &event("custom", "trigger", Some("other"))).is_empty());
        assert!(names(&m, &event("custom", "trigger", None)).is_empty());
    }

    #[test]
    fn object_source_filters_follow_the_original() {
        let m = Matcher::new(&[
            sub("typed", "custom", Some(r#"{"source_type":"webhook"}"#)),
            sub("nosys", "custom", Some(r#"{"exclude_system":true}"#)),
            sub("payload", "custom", Some(r#"{"payload_type":"push, pr"}"#)),
        ]);
        assert_eq!(
            names(&m, &event("custom", "webhook", None)),
            ["typed", "nosys"]
        );
        assert!(names(&m, &event("custom", "system", None)).is_empty());
        let mut e = event("custom", "system", None);
        e.payload = r#"{"type":"pr"}"#.into();
        assert_eq!(names(&m, &e), ["payload"]);
        assert!(SourceFilter::parse(Some(r#"{"nope":1}"#)).is_err());
    }

    #[test]
    fn target_persona_restricts_delivery() {
        let m = Matcher::new(&[
            sub("a", "persona_action", None),
            sub("b", "persona_action", None),
        ]);
        let mut e = event("persona_action", "persona", Some("x"));
        assert_eq!(names(&m, &e), ["a", "b"]);
        e.target_persona_id = Some("b".into());
        assert_eq!(names(&m, &e), ["b"]);
        e.target_persona_id = Some("nobody".into());
        assert!(names(&m, &e).is_empty());
    }

    #[test]
    fn own_events_disabled_rows_and_other_projects_are_skipped() {
        let mut off = sub("off", "custom", None);
        off.enabled = false;
        let mut p2 = sub("p2", "custom", None);
        p2.project_id = Some("p2".into());
        let m = Matcher::new(&[sub("self", "custom", None), off, p2, sub("self", "*", None)]);
        assert!(names(&m, &event("custom", "persona", Some("self"))).is_empty());
        assert_eq!(
            names(&m, &event("custom", "persona", Some("x"))),
            ["self"],
            "deduplicated"
        );
        let mut e = event("custom", "persona", Some("x"));
        e.project_id = "p2".into();
        assert_eq!(names(&m, &e), ["self", "p2"]);
    }
}
