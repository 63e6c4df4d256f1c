//! Changing a handler without fear: candidate versions beside the live
//! one (`[rollout]` in a manifest, loaded by the registry).
//!
//! - [`shadow`]: a shadow runs every event after the live version, off its
//!   path, and only its differences are kept (`handlers diff`).
//! - [`canary`]: a canary is live for a share of projects and rolled back
//!   when it errs more than the live version.
//!
//! Promoting or discarding a candidate is a change of files in the
//! handlers folder (`persona-bus handlers promote|discard`), picked up by
//! an ordinary hot reload.

pub mod canary;
pub mod shadow;

use crate::event::Event;
use crate::outcome::Run;
use crate::registry::{LoadedHandler, Snapshot};
use crate::runtime::Origin;
use persona_bus_model::rollout::Rollout;

/// The shadow runner and the canary watch of one host.
pub struct Rollouts {
    pub shadows: shadow::Shadows,
    pub canaries: canary::CanaryWatch,
}

impl Rollouts {
    /// After `run` of `handler` on `event`: offers it to the handler's
    /// shadow, and counts it for its canary. Cheap when the snapshot has
    /// no candidates (the caller checks that first).
    pub fn after_run(
        &self,
        snapshot: &Snapshot,
        handler: &LoadedHandler,
        event: &Event,
        origin: &Origin,
        run: &mut Run,
    ) {
        let Some(candidate) = snapshot.candidates.get(&handler.name) else {
            return;
        };
        match &candidate.manifest.rollout {
            Some(Rollout::Shadow { .. }) => self.shadows.offer(candidate, event, origin, run),
            Some(Rollout::Canary(_)) => {
                self.canaries.observe(candidate, run);
            }
            None => {}
        }
    }
}
