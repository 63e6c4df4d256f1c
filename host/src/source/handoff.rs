//! Publishes handed to the poller in memory, already claimed.
//!
//! An event published in this process used to be stored `pending`, and the
//! poller, woken by the publish, claimed it with a write of its own: the
//! row and its status index entry again, usually in a transaction of its
//! own (a stream of one-event publishes commits a few events at a time).
//! The SQLite writer is the bottleneck of such publishes, and that claim
//! was a large share of its time. Instead, the publish transaction stores
//! the events already claimed (`processing`, `claimed_at`, one claim),
//! puts them in [`HostContext::handoff`], and nudges the poller, which
//! submits them to the pipeline with whatever it claims from SQLite, in
//! batches as before. The publisher's own path gains only a vector push.
//!
//! Only when that keeps every promise the poller's claim keeps:
//! - **Order per project.** No row the poller would claim may be waiting
//!   (one written by the CLI, left behind a full lane, a retry now due):
//!   the transaction looks first and, if one is, stores the batch `pending`
//!   behind it. The poller takes the handed-over events and claims rows
//!   under the queue's lock (which the publish holds from its transaction
//!   to its push, so neither can come between the other's steps), and
//!   submits the handed-over events first. It is the only thread that
//!   submits SQLite's events, so they reach the pipeline in that order.
//! - **Backpressure.** The pipeline must have room for the batch and for
//!   what is queued already, with no full lane among its projects
//!   ([`Pipeline::would_take`]); otherwise the events wait `pending`, as
//!   before, and the publish never waits for handlers.
//! - **Crash recovery.** The rows are claimed as the poller's are: a host
//!   that dies leaves them `processing`, and the next start returns them.
//!   At shutdown, events still queued are returned to `pending`.
//! - **SQLite in charge.** With Kafka the source the consumer brings the
//!   events back; and only while the poller runs (not before
//!   [`crate::Bus::start`], nor for `Bus::drain`).
//!
//! [`HostContext::handoff`]: crate::context::HostContext::handoff

use crate::context::HostContext;
use crate::event::{Event, EventStatus, now_millis};
use crate::pipeline::Pipeline;
use crate::store::{ClaimScope, Gathered, StoreError};
use persona_bus_model::sync::Locked;

/// Commits a group of publishes (the leader of a `GroupCommit` calls this;
/// `take` gives the queued events once the transaction has begun) and,
/// with `hand_over` and when the module doc allows, hands them to the
/// poller already claimed.
pub(crate) fn commit_published(
    ctx: &HostContext,
    pipeline: &Pipeline,
    hand_over: bool,
    take: &mut dyn FnMut() -> Vec<Event>,
) -> Result<(), StoreError> {
    let eligible = hand_over && !ctx.stopping() && ctx.source.claim_scope() == ClaimScope::Local;
    // Held through the transaction: the poller takes it to claim, so no
    // claim can come between this transaction's look for waiting rows and
    // the queue. The poller holds it only for a claim.
    let queue = eligible.then(|| ctx.handoff.locked());
    let (events, claimed) = ctx.store.insert_gathered(|| {
        let events = take();
        let claim_at = queue
            .as_ref()
            .is_some_and(|q| pipeline.would_take(&events, q.len()))
            .then(now_millis);
        Gathered { events, claim_at }
    })?;
    // Announced before anyone can take them: once handed over (or the
    // poller rung) a handler may finish an event at once, and the notice of
    // its outcome must not reach a listener (the dashboard's live table)
    // before the notice of its publish.
    ctx.notify_published(&events);
    match queue {
        Some(mut queue) if claimed => {
            let n = events.len();
            queue.extend(events.into_iter().map(|mut e| {
                e.status = EventStatus::Processing;
                e
            }));
            drop(queue);
            ctx.handed_over(n);
        }
        queue => {
            drop(queue);
            ctx.stored();
        }
    }
    Ok(())
}
