//! The host's retention thread: a pruning pass over the store every
//! `[store.retention] every_secs`, then the freed pages given back (see
//! `store::retention` for what goes and what always stays).
//!
//! Each step is one short write transaction, with a pause after it, so the
//! committer and publishers get the writer between steps: pruning never
//! holds up handling for more than a step.

use crate::context::HostContext;
use crate::kafka::config::KafkaConfig;
use crate::store::{Pass, Pruned};
use crate::supervisor::{StartError, Supervisor};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// Between two steps: the writer is free for this long at least.
const STEP_PAUSE: Duration = Duration::from_millis(20);
/// Pages (1 KiB) given back per vacuum step: each moves up to that many
/// pages from the end of the file into free ones, a few ms per hundred.
const VACUUM_PAGES: u32 = 128;

/// How long Kafka may deliver an event to this host again: the longest
/// retention of the topics it consumes (0 when it consumes none). Event
/// rows, and with them their ledger and id entries, are kept that long.
pub fn redelivery_hours(k: &KafkaConfig) -> f64 {
    if !k.consuming() {
        return 0.0;
    }
    [&k.topics.events, &k.topics.actions, &k.topics.webhooks]
        .iter()
        .map(|t| t.retention_hours as f64)
        .fold(0.0, f64::max)
}

pub(crate) fn start(ctx: Arc<HostContext>, tasks: &Supervisor) -> Result<(), StartError> {
    tasks.spawn("store-retention", move || {
        let every = Duration::from_secs(ctx.config.store.retention.every_secs);
        loop {
            std::thread::park_timeout(every);
            if ctx.stopping() {
                break;
            }
            run_pass(&ctx);
        }
    })
}

/// One pass: prune step by step until nothing is left, then vacuum.
fn run_pass(ctx: &HostContext) {
    let r = &ctx.config.store.retention;
    let horizons = r.horizons(SystemTime::now(), redelivery_hours(&ctx.config.kafka));
    let started = Instant::now();
    let mut pass = Pass::default();
    let mut total = Pruned::default();
    let m = &ctx.metrics;
    loop {
        if ctx.stopping() {
            return;
        }
        let pruned = match ctx.store.prune_step(&horizons, r.step_rows, &mut pass) {
            Ok((p, held)) => {
                note_step(ctx, held);
                p
            }
            Err(e) => {
                // Nothing was deleted; the next pass tries again.
                tracing::warn!(error = %e, "store retention step failed; trying again next pass");
                return;
            }
        };
        for (counter, n) in
            m.pruned
                .iter()
                .zip([pruned.events, pruned.executions, pruned.dead_letters])
        {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        total.add(pruned);
        if pruned.total() == 0 && pass.done() {
            break;
        }
        std::thread::sleep(STEP_PAUSE);
    }
    let mut pages = 0;
    while !ctx.stopping() {
        match ctx.store.vacuum_step(VACUUM_PAGES) {
            Ok((freed, held)) => {
                note_step(ctx, held);
                if freed == 0 {
                    break;
                }
                pages += freed;
            }
            Err(e) => {
                tracing::warn!(error = %e, "incremental vacuum failed; trying again next pass");
                break;
            }
        }
        std::thread::sleep(STEP_PAUSE);
    }
    m.vacuumed_pages.fetch_add(pages, Ordering::Relaxed);
    if total.total() > 0 || pages > 0 {
        tracing::info!(
            events = total.events,
            executions = total.executions,
            dead_letters = total.dead_letters,
            pages_given_back = pages,
            took = ?started.elapsed(),
            "store retention pass"
        );
    }
}

fn note_step(ctx: &HostContext, took: Duration) {
    ctx.metrics
        .prune_step_max_us
        .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
}
