//! Reading what the rules watch, from the same sources as `/metrics`: the
//! store (dead letters, outbox), the source switch (breaker), the Kafka
//! admin API (lag, sampled by [`crate::kafka::lag`]) and the host's own run
//! counters (error rates).

use super::config::{AlertRule, Signal};
use super::state::Observation;
use crate::breaker::State;
use crate::context::HostContext;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

/// Per-handler (runs, failed runs) at one moment.
type Runs = BTreeMap<String, (u64, u64)>;

/// What the reader remembers between evaluations.
pub struct Reader {
    /// Run counters over time, for windowed error rates. They count from
    /// this host's start, so a window reaching before it has no data.
    samples: VecDeque<(Instant, Runs)>,
    started: Instant,
    /// The longest error-rate window of any rule (samples kept that long).
    keep: Duration,
}

/// The readings of one evaluation that several rules may share.
#[derive(Default)]
pub struct Tick {
    lag: Option<Result<(String, i64), String>>,
}

impl Reader {
    pub fn new(rules: &[AlertRule]) -> Self {
        let keep = rules
            .iter()
            .filter(|r| r.signal == Signal::ErrorRate)
            .map(AlertRule::window)
            .max()
            .unwrap_or_default();
        Self {
            samples: VecDeque::new(),
            started: Instant::now(),
            keep,
        }
    }

    /// Whether this run has counted runs for the whole of `rule`'s window.
    pub fn has_window(&self, rule: &AlertRule, now: Instant) -> bool {
        now.duration_since(self.started) >= rule.window()
    }

    /// Takes this evaluation's sample of the run counters.
    pub fn sample(&mut self, ctx: &HostContext, now: Instant) {
        if self.keep.is_zero() {
            return;
        }
        self.samples.push_back((now, ctx.metrics.handler_runs()));
        // Keep one sample at or before the longest window's start.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= self.keep {
            self.samples.pop_front();
        }
    }

    /// What `rule` sees now: every subject it can read. `Err` when the
    /// signal cannot be read at all (the rule's alerts keep their phase).
    pub fn read(
        &self,
        ctx: &HostContext,
        tick: &mut Tick,
        rule: &AlertRule,
        now: Instant,
    ) -> Result<Vec<Observation>, String> {
        let k = &ctx.config.kafka;
        let above = rule.above;
        match rule.signal {
            Signal::DeadLetters => {
                let window = rule.window();
                let since = SystemTime::now() - window;
                let since = humantime::format_rfc3339_millis(since).to_string();
                let counts = ctx
                    .store
                    .dead_letters_since(&since)
                    .map_err(|e| e.to_string())?;
                let (n, whose) = match &rule.handler {
                    Some(h) => (counts.get(h).copied().unwrap_or(0), format!("handler {h}")),
                    None => (counts.values().sum(), "all handlers".to_owned()),
                };
                Ok(vec![Observation {
                    subject: rule.handler.clone().unwrap_or_default(),
                    value: Some(n as f64),
                    summary: format!(
                        "{n} dead letters in the last {} ({whose}; alert above {above})",
                        humantime::format_duration(window)
                    ),
                }])
            }
            Signal::ConsumerLag => {
                if !k.consuming() {
                    return Ok(Vec::new());
                }
                if !ctx.source.kafka_active() {
                    return Err("Kafka is not in charge (breaker open): no lag to read".into());
                }
                let lag = tick.lag.get_or_insert_with(|| {
                    let topics = [
                        k.topics.events.name.as_str(),
                        k.topics.actions.name.as_str(),
                    ];
                    // A sample from a scrape moments ago serves; one as
                    // old as half the evaluation interval does not.
                    let max_age = (Duration::from_millis(ctx.config.alerts.interval_ms) / 2)
                        .min(crate::kafka::lag::FRESH_FOR);
                    ctx.lag
                        .read(
                            k,
                            &k.consumer_group,
                            &topics,
                            Duration::from_secs(1),
                            max_age,
                        )
                        .map(|v| (v.group.clone(), v.total_lag()))
                });
                let (group, lag) = lag.clone()?;
                Ok(vec![Observation {
                    subject: group.clone(),
                    value: Some(lag as f64),
                    summary: format!("group {group} is {lag} records behind (alert above {above})"),
                }])
            }
            Signal::BreakerOpen => {
                if !k.enabled {
                    return Ok(Vec::new());
                }
                let s = ctx.source.status();
                let open = s.breaker != State::Closed;
                let why = s
                    .last_transition
                    .map(|t| t.reason)
                    .unwrap_or_else(|| "no transition yet".into());
                Ok(vec![Observation {
                    subject: String::new(),
                    value: Some(if open { 1.0 } else { 0.0 }),
                    summary: if open {
                        format!(
                            "the Kafka breaker is {} ({why}); SQLite is handling events",
                            s.breaker.as_str()
                        )
                    } else {
                        format!("the Kafka breaker is closed ({why})")
                    },
                }])
            }
            Signal::OutboxAge => {
                if !k.enabled {
                    return Ok(Vec::new());
                }
                let (n, age) = ctx.store.outbox_depth().map_err(|e| e.to_string())?;
                let secs = age.as_secs_f64();
                Ok(vec![Observation {
                    subject: String::new(),
                    value: Some(secs),
                    summary: format!(
                        "{n} events wait for Kafka, the oldest for {:.0} s (alert above {above} s)",
                        secs
                    ),
                }])
            }
            Signal::ErrorRate => Ok(self.error_rates(rule, now)),
            Signal::CanaryRolledBack => {
                // The registry records each canary's status (`name@canary`),
                // and the canary watch marks it `rolled_back` with why.
                let records = ctx.store.handler_records().map_err(|e| e.to_string())?;
                Ok(records
                    .into_iter()
                    .filter_map(|r| {
                        let handler = r.name.strip_suffix("@canary")?.to_owned();
                        let rolled = match r.status.as_str() {
                            "rolled_back" => true,
                            "canary" => false,
                            _ => return None,
                        };
                        let version = r.version.unwrap_or_default();
                        Some(Observation {
                            value: Some(if rolled { 1.0 } else { 0.0 }),
                            summary: match (rolled, r.error) {
                                (true, Some(why)) => format!("canary {handler} {version}: {why}"),
                                (true, None) => {
                                    format!("canary {handler} {version} was rolled back")
                                }
                                (false, _) => format!("canary {handler} {version} is serving"),
                            },
                            subject: handler,
                        })
                    })
                    .collect())
            }
            Signal::StoreRefusing => {
                let refusals = ctx.store_refusals();
                Ok(vec![Observation {
                    subject: String::new(),
                    value: Some(if refusals.is_empty() { 0.0 } else { 1.0 }),
                    summary: match refusals.first() {
                        Some(r) => format!(
                            "the store refuses writes ({} since {}): {}",
                            r.what, r.since, r.reason
                        ),
                        None => "the store takes writes".into(),
                    },
                }])
            }
        }
    }

    fn error_rates(&self, rule: &AlertRule, now: Instant) -> Vec<Observation> {
        let window = rule.window();
        let (Some((_, latest)), Some(base)) = (
            self.samples.back(),
            // The newest sample at or before the window's start, else the
            // oldest there is.
            self.samples
                .iter()
                .rev()
                .find(|(t, _)| now.duration_since(*t) >= window)
                .or(self.samples.front()),
        ) else {
            return Vec::new();
        };
        let full = self.has_window(rule, now);
        latest
            .iter()
            .filter(|(h, _)| rule.handler.as_ref().is_none_or(|want| want == *h))
            .map(|(h, (runs, errors))| {
                let (r0, e0) = base.1.get(h).copied().unwrap_or_default();
                let (runs, errors) = (runs - r0, errors - e0);
                let (value, summary) = if runs >= rule.min_runs.max(1) {
                    let pct = 100.0 * errors as f64 / runs as f64;
                    (
                        Some(pct),
                        format!(
                            "handler {h}: {errors} of {runs} runs failed in the last {} ({pct:.1}%, alert above {}%)",
                            humantime::format_duration(window),
                            rule.above
                        ),
                    )
                } else {
                    // Too few runs say nothing; before the host has run a
                    // whole window they may yet (no data, not "fine").
                    (
                        if full { Some(0.0) } else { None },
                        format!(
                            "handler {h}: {runs} runs in the last {}, fewer than {} needed",
                            humantime::format_duration(window),
                            rule.min_runs
                        ),
                    )
                };
                Observation {
                    subject: h.clone(),
                    value,
                    summary,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(handler: Option<&str>) -> AlertRule {
        AlertRule {
            name: "errors".into(),
            signal: Signal::ErrorRate,
            above: 5.0,
            window: Some("60s".into()),
            hold: None,
            handler: handler.map(Into::into),
            min_runs: 10,
            severity: "warning".into(),
        }
    }

    fn runs(list: &[(&str, u64, u64)]) -> Runs {
        list.iter()
            .map(|(h, r, e)| (h.to_string(), (*r, *e)))
            .collect()
    }

    #[test]
    fn error_rates_count_the_window_only_and_say_nothing_on_too_few_runs() {
        let r = rule(None);
        let mut reader = Reader::new(std::slice::from_ref(&r));
        let t0 = reader.started;
        reader.samples.push_back((t0, runs(&[("a", 0, 0)])));
        // Before the window is full, too few runs are "no data".
        reader.samples.push_back((
            t0 + Duration::from_secs(30),
            runs(&[("a", 5, 5), ("b", 100, 1)]),
        ));
        let seen = reader.error_rates(&r, t0 + Duration::from_secs(30));
        let a = seen.iter().find(|o| o.subject == "a").unwrap();
        assert_eq!(a.value, None, "{}", a.summary);
        let b = seen.iter().find(|o| o.subject == "b").unwrap();
        assert_eq!(b.value, Some(1.0));
        // 90 s in: the base is the sample 60 s back (t0 + 30 s).
        reader.samples.push_back((
            t0 + Duration::from_secs(90),
            runs(&[("a", 25, 7), ("b", 100, 1)]),
        ));
        let seen = reader.error_rates(&r, t0 + Duration::from_secs(90));
        let a = seen.iter().find(|o| o.subject == "a").unwrap();
        assert_eq!(a.value, Some(10.0), "2 of 20: {}", a.summary);
        let b = seen.iter().find(|o| o.subject == "b").unwrap();
        assert_eq!(b.value, Some(0.0), "no runs in the window: {}", b.summary);
        let only_b = reader.error_rates(&rule(Some("b")), t0 + Duration::from_secs(90));
        assert_eq!(only_b.len(), 1);
    }
}
