//! Alerting from the host itself, for devices with no Prometheus: `[alerts]`
//! rules over the signals `/metrics` shows (dead letters, consumer lag,
//! the breaker, handler error rates, the outbox), evaluated every
//! `interval_ms` on a thread of their own.
//!
//! An alert goes pending -> firing -> resolved (`state`); each firing and
//! each resolve is logged and announced once to every webhook, signed with
//! HMAC-SHA256 and retried with backoff while the receiver is down
//! (`deliver`). Alerts and queued deliveries live in SQLite
//! (`store::alerts`), so a restart neither forgets a firing alert nor
//! announces it twice.

pub mod config;
mod deliver;
mod signals;
pub mod state;

use crate::context::HostContext;
use crate::event::now_millis;
use crate::supervisor::{StartError, Supervisor};
use config::Signal;
use state::{Active, Alert, Change, Observation, Phase};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts the evaluator, unless alerts are off or there are no rules.
pub fn start(ctx: Arc<HostContext>, tasks: &Supervisor) -> Result<(), StartError> {
    let a = &ctx.config.alerts;
    if !a.enabled || a.rules.is_empty() {
        return Ok(());
    }
    tasks.spawn("alerts", move || Evaluator::new(ctx).run())
}

struct Evaluator {
    ctx: Arc<HostContext>,
    reader: signals::Reader,
    /// Active alerts by rule name.
    active: BTreeMap<String, Active>,
    sender: deliver::Sender,
}

impl Evaluator {
    fn new(ctx: Arc<HostContext>) -> Self {
        let a = &ctx.config.alerts;
        Self {
            reader: signals::Reader::new(&a.rules),
            active: BTreeMap::new(),
            sender: deliver::Sender::new(&ctx.config),
            ctx,
        }
    }

    fn run(&mut self) {
        if let Err(e) = self.resume() {
            tracing::error!(error = %e, "cannot read the alerts of the last run; alerting is off");
            return;
        }
        let interval = Duration::from_millis(self.ctx.config.alerts.interval_ms);
        let mut next_eval = Instant::now();
        while !self.ctx.stopping() {
            let now = Instant::now();
            if now >= next_eval {
                self.evaluate(now);
                next_eval = now + interval;
            }
            let next_delivery = self.sender.deliver_due(&self.ctx);
            let until = next_eval.saturating_duration_since(Instant::now());
            let wait = next_delivery.map_or(until, |d| d.min(until));
            std::thread::park_timeout(wait.max(Duration::from_millis(10)));
        }
    }

    /// Loads the alerts a previous run left pending or firing. Those of
    /// rules no longer configured are resolved (and announced).
    fn resume(&mut self) -> Result<(), crate::store::StoreError> {
        let rules = &self.ctx.config.alerts.rules;
        let mut orphans = Vec::new();
        for alert in self.ctx.store.alerts_active()? {
            if rules.iter().any(|r| r.name == alert.rule) {
                self.active
                    .entry(alert.rule.clone())
                    .or_default()
                    .insert(alert.subject.clone(), alert);
            } else if alert.phase == Phase::Firing {
                let mut a = alert;
                a.phase = Phase::Resolved;
                a.resolved_at_ms = Some(now_millis());
                a.summary = format!("{} (the rule is no longer configured)", a.summary);
                orphans.push(Change::Resolved(a));
            } else {
                orphans.push(Change::Dropped(alert));
            }
        }
        let firing = self
            .active
            .values()
            .flat_map(|a| a.values())
            .filter(|a| a.phase == Phase::Firing)
            .count();
        if firing > 0 {
            tracing::warn!(
                firing,
                "alerts still firing from the last run (not announced again)"
            );
        }
        self.save(orphans);
        Ok(())
    }

    fn evaluate(&mut self, now: Instant) {
        self.reader.sample(&self.ctx, now);
        let mut tick = signals::Tick::default();
        let now_ms = now_millis();
        let mut changes = Vec::new();
        for rule in &self.ctx.config.alerts.rules {
            let active = self.active.entry(rule.name.clone()).or_default();
            let mut observed = match self.reader.read(&self.ctx, &mut tick, rule, now) {
                Ok(o) => o,
                Err(why) => {
                    tracing::debug!(rule = %rule.name, %why, "alert rule not evaluated");
                    continue;
                }
            };
            if rule.signal == Signal::ErrorRate && !self.reader.has_window(rule, now) {
                // Counters restart with the host: an alert from before
                // this run is neither resolved nor fired again by them.
                for subject in active.keys() {
                    if !observed.iter().any(|o| &o.subject == subject) {
                        observed.push(Observation {
                            subject: subject.clone(),
                            value: None,
                            summary: String::new(),
                        });
                    }
                }
            }
            changes.extend(state::step(rule, active, &observed, now_ms));
        }
        self.save(changes);
    }

    /// Logs, saves and queues the notifications of `changes`.
    fn save(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            match c {
                Change::Fired(a) => {
                    tracing::warn!(alert = %a.rule, subject = %a.subject, value = a.value, severity = %a.severity, "ALERT FIRING: {}", a.summary)
                }
                Change::Resolved(a) => {
                    tracing::info!(alert = %a.rule, subject = %a.subject, value = a.value, "alert resolved: {}", a.summary)
                }
                _ => {}
            }
        }
        let urls = self.sender.urls();
        let body = |a: &Alert| self.sender.body(a);
        match self
            .ctx
            .store
            .alerts_apply(&changes, &urls, now_millis(), body)
        {
            Ok(ids) => {
                for ((rule, subject), id) in ids {
                    if let Some(a) = self.active.get_mut(&rule).and_then(|m| m.get_mut(&subject)) {
                        a.id = id;
                    }
                }
            }
            Err(e) => {
                // The in-memory state moved on; the next change of these
                // alerts is saved again. A lost notice is logged above.
                tracing::error!(error = %e, "cannot save alert state");
            }
        }
    }
}

/// Alerts and deliveries for `persona-bus alerts list` and the API.
pub fn listing(
    store: &crate::store::Store,
    limit: usize,
) -> Result<serde_json::Value, crate::store::StoreError> {
    let alerts = store.alerts(limit)?;
    let deliveries = store.alert_deliveries(limit)?;
    Ok(serde_json::json!({
        "alerts": alerts.iter().map(alert_json).collect::<Vec<_>>(),
        "deliveries": deliveries.iter().map(|d| serde_json::json!({
            "id": d.id,
            "alert_id": d.alert_id,
            "status": d.status,
            "url": d.url,
            "attempts": d.attempts,
            "state": if d.delivered_at_ms.is_some() { "delivered" } else if d.next_at_ms.is_some() { "retrying" } else { "gave_up" },
            "next_at": d.next_at_ms.map(rfc3339),
            "delivered_at": d.delivered_at_ms.map(rfc3339),
            "last_error": d.last_error,
            "created_at": rfc3339(d.created_at_ms),
        })).collect::<Vec<_>>(),
    }))
}

/// An alert as notifications, the API and the CLI show it.
pub fn alert_json(a: &Alert) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "rule": a.rule,
        "subject": a.subject,
        "signal": a.signal,
        "severity": a.severity,
        "status": a.phase.as_str(),
        "value": a.value,
        "threshold": a.threshold,
        "summary": a.summary,
        "since": rfc3339(a.since_ms),
        "fired_at": a.fired_at_ms.map(rfc3339),
        "resolved_at": a.resolved_at_ms.map(rfc3339),
    })
}

pub(crate) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
