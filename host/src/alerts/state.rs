//! An alert's life, as a pure function of what the rules read: inactive ->
//! pending (the condition holds) -> firing (it held for the rule's `for`)
//! -> resolved (it stopped holding). Only firing and resolved are notified,
//! once each, so a condition that stays true never notifies again however
//! often it is evaluated, and a restart that finds an alert firing (loaded
//! from SQLite) carries on without a second notification.

use super::config::AlertRule;
pub use persona_bus_model::alert::{Alert, Change, Phase};
use std::collections::BTreeMap;

/// What a rule read for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub subject: String,
    /// `None`: not enough data to say (the alert keeps its phase).
    pub value: Option<f64>,
    pub summary: String,
}

/// Active (pending or firing) alerts of one rule, by subject.
pub type Active = BTreeMap<String, Alert>;

/// One evaluation of `rule`: `observed` holds every subject the rule could
/// read (a subject that is not there no longer holds the condition; one
/// with no value is left as it is). `active` is updated in place.
pub fn step(
    rule: &AlertRule,
    active: &mut Active,
    observed: &[Observation],
    now_ms: i64,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let hold_ms = rule.hold().as_millis() as i64;
    let holds = |o: &Observation| {
        o.value.map(|v| match rule.signal {
            super::config::Signal::BreakerOpen => v > 0.0,
            _ => v > rule.above,
        })
    };
    for o in observed {
        let Some(true) = holds(o) else { continue };
        let value = o.value.unwrap_or_default();
        let new = !active.contains_key(&o.subject);
        let alert = active.entry(o.subject.clone()).or_insert_with(|| Alert {
            id: 0,
            rule: rule.name.clone(),
            subject: o.subject.clone(),
            signal: rule.signal.as_str().into(),
            severity: rule.severity.clone(),
            phase: Phase::Pending,
            value,
            threshold: rule.above,
            summary: o.summary.clone(),
            since_ms: now_ms,
            fired_at_ms: None,
            resolved_at_ms: None,
        });
        let moved = new || alert.value != value || alert.summary != o.summary;
        alert.value = value;
        alert.summary.clone_from(&o.summary);
        match alert.phase {
            Phase::Pending if now_ms - alert.since_ms >= hold_ms => {
                alert.phase = Phase::Firing;
                alert.fired_at_ms = Some(now_ms);
                changes.push(Change::Fired(alert.clone()));
            }
            _ if moved => changes.push(Change::Saved(alert.clone())),
            _ => {}
        }
    }
    let still: Vec<String> = active
        .keys()
        .filter(|subject| {
            let seen = observed.iter().find(|o| &o.subject == *subject);
            // Kept: the condition holds, or there is no data to say.
            seen.is_some_and(|o| holds(o) != Some(false))
        })
        .cloned()
        .collect();
    active.retain(|subject, alert| {
        if still.contains(subject) {
            return true;
        }
        match alert.phase {
            Phase::Firing => {
                alert.phase = Phase::Resolved;
                alert.resolved_at_ms = Some(now_ms);
                if let Some(o) = observed.iter().find(|o| &o.subject == subject) {
                    alert.value = o.value.unwrap_or_default();
                    alert.summary.clone_from(&o.summary);
                }
                changes.push(Change::Resolved(alert.clone()));
            }
            _ => changes.push(Change::Dropped(alert.clone())),
        }
        false
    });
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::Signal;

    fn rule(hold: &str) -> AlertRule {
        AlertRule {
            name: "dl".into(),
            signal: Signal::DeadLetters,
            above: 2.0,
            window: Some("1m".into()),
            hold: Some(hold.into()),
            handler: None,
            min_runs: 1,
            severity: "warning".into(),
        }
    }

    fn seen(v: Option<f64>) -> Vec<Observation> {
        vec![Observation {
            subject: String::new(),
            value: v,
            summary: format!("{v:?}"),
        }]
    }

    fn kinds(c: &[Change]) -> Vec<&'static str> {
        c.iter()
            .map(|c| match c {
                Change::Fired(_) => "fired",
                Change::Resolved(_) => "resolved",
                Change::Saved(_) => "saved",
                Change::Dropped(_) => "dropped",
            })
            .collect()
    }

    #[test]
    fn fires_once_after_its_hold_and_resolves_once() {
        let r = rule("10s");
        let mut a = Active::new();
        assert!(step(&r, &mut a, &seen(Some(1.0)), 0).is_empty(), "below");
        assert_eq!(kinds(&step(&r, &mut a, &seen(Some(3.0)), 1_000)), ["saved"]);
        assert_eq!(a[""].phase, Phase::Pending);
        assert!(step(&r, &mut a, &seen(Some(3.0)), 5_000).is_empty());
        assert_eq!(
            kinds(&step(&r, &mut a, &seen(Some(3.0)), 11_000)),
            ["fired"]
        );
        for t in 12..40 {
            assert!(step(&r, &mut a, &seen(Some(3.0)), t * 1_000).is_empty());
        }
        // Unknown leaves it firing.
        assert!(step(&r, &mut a, &seen(None), 41_000).is_empty());
        assert_eq!(a[""].phase, Phase::Firing);
        let c = step(&r, &mut a, &seen(Some(0.0)), 42_000);
        assert_eq!(kinds(&c), ["resolved"]);
        assert!(a.is_empty());
        assert!(step(&r, &mut a, &seen(Some(0.0)), 43_000).is_empty());
    }

    #[test]
    fn a_pending_alert_that_clears_is_dropped_without_notice() {
        let r = rule("1m");
        let mut a = Active::new();
        step(&r, &mut a, &seen(Some(5.0)), 0);
        assert_eq!(kinds(&step(&r, &mut a, &[], 1_000)), ["dropped"]);
        assert!(a.is_empty());
    }

    #[test]
    fn a_reloaded_firing_alert_does_not_fire_again() {
        let r = rule("0s");
        let mut a = Active::new();
        assert_eq!(kinds(&step(&r, &mut a, &seen(Some(5.0)), 0)), ["fired"]);
        // What a restart loads from SQLite.
        let mut reloaded = a.clone();
        assert!(step(&r, &mut reloaded, &seen(Some(5.0)), 60_000).is_empty());
        assert_eq!(
            kinds(&step(&r, &mut reloaded, &seen(Some(6.0)), 61_000)),
            ["saved"]
        );
    }
}
