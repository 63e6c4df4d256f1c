//! What came of running handlers on an event, and what to do next.
//!
//! Dispatch produces a [`Resolution`] per event; the store commits a batch of
//! them in one transaction. A handler's effects ride along in its [`Run`] and
//! are applied only when its ledger entry is written, in that same
//! transaction: that is what makes effects exactly-once.

use crate::event::{Event, EventStatus};
use crate::manifest::RetryPolicy;
use std::sync::Arc;
use std::time::Duration;

/// One buffered write to a handler's key-value state.
#[derive(Debug, Clone, PartialEq)]
pub enum StateOp {
    Set(String, Vec<u8>),
    Delete(String),
    /// Applied as read-add-write inside the commit, so concurrent increments
    /// never lose an update.
    Add(String, i64),
}

/// Everything a handler asked for during one call.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    pub state: Vec<StateOp>,
    /// Follow-up events, already validated, with ids and chain depth.
    pub published: Vec<Event>,
    /// The call's last value of each key it wrote (`None`: deleted), for
    /// the state overlay (`runtime::StateOverlay`); taken by the lane
    /// before the outcome is committed, so never stored.
    pub view: Vec<(String, Option<Vec<u8>>)>,
    /// The first value the call read of each key it did not write first
    /// (from the overlay or the store), whatever the outcome: what a
    /// shadow version is given to read for the same event. Recorded only
    /// for a handler with a shadow (`HandlerRef::record_io`).
    pub reads: Vec<(String, Option<Vec<u8>>)>,
    /// `METHOD URI` of each outbound request the call made, sent or
    /// refused, whatever the outcome; recorded as `reads` are, so a shadow
    /// can be compared on what it would have sent.
    pub requests: Vec<String>,
}

/// Why an attempt failed without the handler saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (a Rust panic, `unreachable`, a bad memory access).
    Trap,
    /// It ran past its manifest's `timeout_ms`.
    Timeout,
    /// It tried to grow memory past its manifest's `memory_mb`.
    OutOfMemory,
    /// It used up its manifest's `fuel`.
    OutOfFuel,
    /// It broke a host limit through an import (log flood, state quota).
    Limit,
    /// It could not be instantiated (pool exhausted, start function trapped).
    Instantiate,
    /// The event is larger than the handler's `limits.max_event_bytes`: it
    /// was not run, and never will be (dead-lettered at once).
    InputTooLarge,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::OutOfFuel => "out_of_fuel",
            Self::Limit => "limit",
            Self::Instantiate => "instantiate",
            Self::InputTooLarge => "input_too_large",
        }
    }
}

/// How one call of one handler ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Completed,
    /// The handler returned `retry(reason)`.
    Retry(String),
    /// The handler returned `reject(reason)`.
    Rejected(String),
    /// The runtime stopped it.
    Failed {
        kind: FailureKind,
        message: String,
    },
}

impl RunOutcome {
    /// The `outcome` column of `persona_runs` (the `persona_executions` view).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retry(_) => "retry",
            Self::Rejected(_) => "rejected",
            Self::Failed { kind, .. } => kind.as_str(),
        }
    }

    pub fn error(&self) -> Option<String> {
        match self {
            Self::Completed => None,
            Self::Retry(r) => Some(format!("retry: {r}")),
            Self::Rejected(r) => Some(format!("rejected: {r}")),
            Self::Failed { kind, message } => Some(format!("{}: {message}", kind.as_str())),
        }
    }
}

/// What happens to this (event, handler) pair after a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Handled: ledger entry written, effects applied.
    Done,
    /// Try again at this time (ms since the epoch).
    RetryAt(i64),
    /// Give up: ledger entry written, dead letter stored, effects dropped.
    DeadLetter { reason: &'static str },
}

impl Verdict {
    /// Applies the retry policy to an outcome of attempt `attempt`.
    pub fn decide(outcome: &RunOutcome, attempt: u32, policy: &RetryPolicy, now_ms: i64) -> Self {
        match outcome {
            RunOutcome::Completed => Self::Done,
            RunOutcome::Rejected(_) => Self::DeadLetter { reason: "rejected" },
            RunOutcome::Failed {
                kind: FailureKind::InputTooLarge,
                ..
            } => Self::DeadLetter {
                reason: "input_too_large",
            },
            RunOutcome::Retry(_) | RunOutcome::Failed { .. } if attempt >= policy.max_attempts => {
                Self::DeadLetter {
                    reason: "attempts_exhausted",
                }
            }
            RunOutcome::Retry(_) | RunOutcome::Failed { .. } => {
                Self::RetryAt(now_ms + policy.delay_after(attempt).as_millis() as i64)
            }
        }
    }
}

/// One handler call on one event.
#[derive(Debug, Clone)]
pub struct Run {
    pub handler: Arc<str>,
    pub version: Arc<str>,
    pub attempt: u32,
    pub started_at: String,
    pub duration: Duration,
    pub outcome: RunOutcome,
    pub verdict: Verdict,
    pub effects: Effects,
    /// A limit the handler ran into without failing (publish refused, ...).
    pub note: Option<String>,
    /// Events handed to the call this run came from, on the first run of
    /// a call (1 for `handle`); 0 on the other runs of a batch call. Summed
    /// per handler it is calls and events per call (`/metrics`).
    pub call_events: u32,
}

/// The event's next state.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Final {
        status: EventStatus,
        error: Option<String>,
    },
    /// Back to `pending` until this time, for the handlers still owed a run.
    Retry { at_ms: i64, error: String },
    /// Back to `pending` until this time (or until a handler loads) without
    /// an attempt counted: a handler it is for is held, refused by
    /// `[trust]` or its component not pulled yet. A refusal is the host's
    /// doing, not the event's, so it never dead-letters the event.
    Wait { at_ms: i64, reason: String },
}

/// Everything to commit for one claimed event.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub event: Event,
    pub runs: Vec<Run>,
    pub next: Next,
}

impl Resolution {
    /// Derives the event's next state from its subscribers' runs and ledger.
    /// `earlier` holds the ledger outcomes ("completed"/"dead_letter") of
    /// subscribers that finished in an earlier attempt.
    pub fn summarize(event: Event, subscribers: usize, earlier: &[String], runs: Vec<Run>) -> Self {
        let next = if subscribers == 0 && earlier.is_empty() {
            Next::Final {
                status: EventStatus::Skipped,
                error: None,
            }
        } else if let Some(at_ms) = runs
            .iter()
            .filter_map(|r| match r.verdict {
                Verdict::RetryAt(at) => Some(at),
                _ => None,
            })
            .min()
        {
            let error = runs
                .iter()
                .filter_map(|r| r.outcome.error().map(|e| format!("{}: {e}", r.handler)))
                .collect::<Vec<_>>()
                .join("; ");
            Next::Retry { at_ms, error }
        } else {
            let dead: Vec<String> = runs
                .iter()
                .filter(|r| matches!(r.verdict, Verdict::DeadLetter { .. }))
                .map(|r| format!("{}: {}", r.handler, r.outcome.error().unwrap_or_default()))
                .collect();
            if !dead.is_empty() || earlier.iter().any(|o| o == "dead_letter") {
                let error = if dead.is_empty() {
                    "dead-lettered in an earlier attempt".to_owned()
                } else {
                    dead.join("; ")
                };
                Next::Final {
                    status: EventStatus::DeadLetter,
                    error: Some(error),
                }
            } else {
                Next::Final {
                    status: EventStatus::Completed,
                    error: None,
                }
            }
        };
        Self { event, runs, next }
    }

    /// Makes the event wait for `held` (`(handler, why)`), unless a run
    /// asked for a retry: the held handlers are still owed a run then,
    /// and the retry brings the event back anyway.
    pub fn waiting_for(mut self, held: &[(Arc<str>, Arc<str>)], at_ms: i64) -> Self {
        if held.is_empty() || matches!(self.next, Next::Retry { .. }) {
            return self;
        }
        let reason = held
            .iter()
            .map(|(h, why)| format!("waiting for {h}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        self.next = Next::Wait { at_ms, reason };
        self
    }
}

/// A counter value as `increment` stores it (`StateOp::Add`): decimal text.
pub fn parse_counter(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}
