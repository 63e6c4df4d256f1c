//! An alert of the host's own rules, as the store keeps it and the API shows
//! it. The rules that move an alert between phases live in the host.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Firing,
    Resolved,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Phase::Pending,
            "firing" => Phase::Firing,
            "resolved" => Phase::Resolved,
            _ => return None,
        })
    }
}

/// One alert: a rule and a subject (a handler, a group, or empty).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Row id in `persona_alerts` (0 before it is first saved).
    pub id: i64,
    pub rule: String,
    pub subject: String,
    pub signal: String,
    pub severity: String,
    pub phase: Phase,
    pub value: f64,
    pub threshold: f64,
    pub summary: String,
    /// When the condition started holding (ms since the epoch).
    pub since_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
}

/// What to do with an alert after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Save it and notify "firing".
    Fired(Alert),
    /// Save it and notify "resolved"; it leaves the active set.
    Resolved(Alert),
    /// Save it (a new pending alert, or a firing one whose value moved).
    Saved(Alert),
    /// A pending alert whose condition stopped before it fired: forget it.
    Dropped(Alert),
}
