//! `[rollout]`: a second version of a handler beside the live one, as a
//! shadow (sees every event, commits nothing) or a canary (live for a
//! share of projects, rolled back when it errs more than the live one).
//!
//! A manifest with `[rollout]` is a *candidate* for the handler it names:
//! it needs a live manifest of that name in the same folder, and its
//! component defaults to `<file stem>.wasm` (`router.shadow.toml` runs
//! `router.shadow.wasm`), never the live one's.

use crate::outbound::OutboundRule;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    #[serde(default)]
    shadow: bool,
    canary: Option<f64>,
    rollback_above: Option<f64>,
    window_secs: Option<u64>,
    min_events: Option<u32>,
    #[serde(default)]
    shadow_outbound_hosts: Vec<String>,
}

/// What a candidate version does.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollout {
    /// Runs on every event the live version runs on, after it, with the
    /// state the live call read; nothing it does is committed.
    Shadow {
        /// Where its outbound HTTP may go (default: nowhere, whatever the
        /// manifest's `allowed_outbound_hosts` says).
        outbound: Arc<[OutboundRule]>,
    },
    /// Live for the projects whose stable hash falls in its share.
    Canary(Canary),
}

/// A canary's share and when it is rolled back.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// Percent of projects (0 < share < 100).
    pub share: f64,
    /// Rolled back when its error rate over `window` is more than this many
    /// percentage points above the live version's.
    pub rollback_above: f64,
    pub window: Duration,
    /// Canary runs in the window before it is judged.
    pub min_events: u32,
}

impl Canary {
    /// Whether `project` runs on the canary. The hash is FNV-1a 64 of the
    /// project id, in 10,000 buckets: stable across restarts, hosts and
    /// versions, so a project never flips back and forth.
    pub fn takes(&self, project: &str) -> bool {
        (project_bucket(project) as f64) < self.share * 100.0
    }
}

/// A project's bucket, 0..10,000 (see [`Canary::takes`]).
pub fn project_bucket(project: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in project.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short keys that differ in one byte.
    hash ^= hash >> 32;
    hash % 10_000
}

impl Rollout {
    /// `shadow` or `canary`, for logs, records and metrics labels.
    pub fn role(&self) -> &'static str {
        match self {
            Self::Shadow { .. } => "shadow",
            Self::Canary(_) => "canary",
        }
    }
}

impl RawRollout {
    /// The rollout it names; Err(key, reason) when it is not one.
    pub(crate) fn resolve(self) -> Result<Rollout, (&'static str, String)> {
        match (self.shadow, self.canary) {
            (true, Some(_)) => Err((
                "rollout",
                "is either `shadow = true` or `canary = <percent>`, not both".into(),
            )),
            (false, None) => Err((
                "rollout",
                "needs `shadow = true` or `canary = <percent of projects>`".into(),
            )),
            (true, None) => {
                if self.rollback_above.is_some()
                    || self.window_secs.is_some()
                    || self.min_events.is_some()
                {
                    return Err((
                        "rollout",
                        "rollback_above, window_secs and min_events are for a canary".into(),
                    ));
                }
                let outbound = self
                    .shadow_outbound_hosts
                    .iter()
                    .map(|t| OutboundRule::parse(t))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|r| ("rollout.shadow_outbound_hosts", r))?;
                Ok(Rollout::Shadow {
                    outbound: outbound.into(),
                })
            }
            (false, Some(share)) => {
                if !(share > 0.0 && share < 100.0) {
                    return Err((
                        "rollout.canary",
                        format!("is a percent of projects above 0 and below 100, not {share}"),
                    ));
                }
                if !self.shadow_outbound_hosts.is_empty() {
                    return Err((
                        "rollout.shadow_outbound_hosts",
                        "is for a shadow; a canary uses allowed_outbound_hosts".into(),
                    ));
                }
                let rollback_above = self.rollback_above.unwrap_or(5.0);
                if !(0.0..=100.0).contains(&rollback_above) {
                    return Err((
                        "rollout.rollback_above",
                        "is percentage points, 0 to 100".into(),
                    ));
                }
                let window_secs = self.window_secs.unwrap_or(60);
                if window_secs == 0 || window_secs > 3600 {
                    return Err(("rollout.window_secs", "must be 1 to 3600".into()));
                }
                Ok(Rollout::Canary(Canary {
                    share,
                    rollback_above,
                    window: Duration::from_secs(window_secs),
                    min_events: self.min_events.unwrap_or(20).max(1),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(share: f64) -> Canary {
        Canary {
            share,
            rollback_above: 5.0,
            window: Duration::from_secs(60),
            min_events: 20,
        }
    }

    #[test]
    fn the_share_of_projects_is_close_to_the_setting() {
        for share in [1.0, 10.0, 50.0, 90.0] {
            let c = canary(share);
            let on = (0..10_000)
                .filter(|i| c.takes(&format!("project-{i}")))
                .count();
            let got = on as f64 / 100.0;
            assert!((got - share).abs() < 1.5, "share {share}: {got}");
        }
    }

    #[test]
    fn a_project_stays_where_it_is_and_a_larger_share_keeps_it() {
        let small = canary(10.0);
        let large = canary(30.0);
        for i in 0..2_000 {
            let p = format!("p{i}");
            assert_eq!(small.takes(&p), small.takes(&p));
            if small.takes(&p) {
                assert!(large.takes(&p), "{p} left the canary when its share grew");
            }
        }
    }

    #[test]
    fn a_rollout_is_one_thing_with_its_own_keys() {
        let both = RawRollout {
            shadow: true,
            canary: Some(5.0),
            ..Default::default()
        };
        assert!(both.resolve().is_err());
        assert!(RawRollout::default().resolve().is_err());
        let out_of_range = RawRollout {
            canary: Some(100.0),
            ..Default::default()
        };
        assert!(out_of_range.resolve().unwrap_err().1.contains("below 100"));
        let shadow_with_rollback = RawRollout {
            shadow: true,
            rollback_above: Some(1.0),
            ..Default::default()
        };
        assert!(shadow_with_rollback.resolve().is_err());
    }
}
