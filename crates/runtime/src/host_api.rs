//! The host API a handler imports (`persona:bus/host`, `/state` and, at
//! 0.2.0, `/batch`), at both versions of the contract.
//!
//! Nothing here writes to the database: publishes and state writes are
//! buffered in [`Call::effects`] and committed by the store together with the
//! ledger entry, only if the call completes. In a batch call the buffer is
//! closed at each `batch.next`, so each event's effects stay its own.

use super::limits::LimitHit;
use super::{CallEnv, HostState, Origin};
use persona_bus_model::event::{self, Event};
use persona_bus_model::manifest::Limits;
use persona_bus_model::outcome::{Effects, StateOp, parse_counter};
use persona_bus_model::sync::Locked;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most state operations one call may buffer.
const MAX_STATE_OPS: usize = 10_000;
/// Longest log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// What the host knows about the call in progress.
pub(crate) struct Call {
    pub(crate) handler: Arc<str>,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) secrets: Arc<persona_bus_model::secrets::Secrets>,
    pub(crate) limits: Limits,
    pub(crate) event_id: String,
    pub(crate) project_id: String,
    /// The call's ordering unit, whose pending state writes it reads, when
    /// it is not the project (the default: no copy made per call).
    pub(crate) unit: Option<String>,
    pub(crate) chain_depth: u32,
    pub(crate) env: Arc<CallEnv>,
    pub(crate) effects: Effects,
    /// This call's view of each key it wrote (`None`: deleted): what its
    /// own reads return, and what the overlay gets if it completes. In a
    /// batch, the current event's writes.
    written: persona_bus_model::fast_map::FastMap<String, Option<Vec<u8>>>,
    /// In a batch: what the events taken before the current one wrote,
    /// read after `written` (each event sees the writes of those before it).
    earlier: persona_bus_model::fast_map::FastMap<String, Option<Vec<u8>>>,
    /// The events of a batch call and where the cursor is; None for `handle`.
    pub(crate) batch: Option<Batch>,
    /// What the call read from outside itself, when asked to record it
    /// (see `Effects::reads`).
    pub(crate) reads: Option<Vec<(String, Option<Vec<u8>>)>>,
    pub(crate) log_lines: u32,
    /// Bytes published and written to state in this call so far.
    pub(crate) output_bytes: usize,
    pub(crate) note: Option<String>,
}

impl Call {
    pub(crate) fn new(
        handler: &Arc<str>,
        (config, secrets): (
            &Arc<BTreeMap<String, String>>,
            &Arc<persona_bus_model::secrets::Secrets>,
        ),
        limits: &Limits,
        (event, unit): (&Event, &str),
        env: &Arc<CallEnv>,
    ) -> Self {
        Self {
            handler: handler.clone(),
            config: config.clone(),
            secrets: secrets.clone(),
            limits: limits.clone(),
            event_id: event.id.clone(),
            project_id: event.project_id.clone(),
            unit: (unit != event.project_id).then(|| unit.to_owned()),
            chain_depth: event.chain_depth,
            env: env.clone(),
            effects: Effects::default(),
            written: Default::default(),
            earlier: Default::default(),
            batch: None,
            reads: None,
            log_lines: 0,
            output_bytes: 0,
            note: None,
        }
    }

    /// Adds a line to the dry run's transcript, if this is one.
    pub(crate) fn record(&self, line: impl FnOnce() -> String) {
        if let Some(t) = &self.env.transcript {
            t.locked().push(self.secrets.scrub(line()));
        }
    }

    /// Counts `bytes` of output against `limits.max_output_bytes`.
    fn spend_output(&mut self, bytes: usize) -> Result<(), String> {
        let max = self.limits.max_output_bytes;
        if self.output_bytes + bytes > max {
            let why = format!(
                "output limit: this call would write {} bytes, above limits.max_output_bytes = {max}",
                self.output_bytes + bytes
            );
            self.note = Some(why.clone());
            return Err(why);
        }
        self.output_bytes += bytes;
        Ok(())
    }
    /// The value of `key` as this call sees it: its own writes, else what
    /// earlier completed calls of its unit wrote and is not committed yet
    /// (the overlay), else the committed value.
    fn current(&mut self, key: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(v) = self.written.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.earlier.get(key) {
            return Ok(v.clone());
        }
        let value = match self.env.overlay.get(
            &self.handler,
            self.unit.as_deref().unwrap_or(&self.project_id),
            key,
        ) {
            Some(v) => v,
            None => self
                .env
                .host
                .state_get(&self.handler, key)
                .map_err(|e| wasmtime::Error::msg(format!("state read failed: {e}")))?,
        };
        if let Some(reads) = &mut self.reads
            && !reads.iter().any(|(k, _)| k == key)
        {
            reads.push((key.to_owned(), value.clone()));
        }
        Ok(value)
    }

    /// What the call did, with its view of the keys it wrote.
    pub(crate) fn take_effects(&mut self) -> Effects {
        let mut effects = std::mem::take(&mut self.effects);
        effects.view = self.written.drain().collect();
        if let Some(reads) = &mut self.reads {
            effects.reads = std::mem::take(reads);
        }
        effects
    }

    /// Buffers a write, and what the key holds after it (`after`).
    fn push_state(&mut self, op: StateOp, after: Option<Vec<u8>>) -> wasmtime::Result<()> {
        if self.effects.state.len() >= MAX_STATE_OPS {
            return Err(wasmtime::Error::new(LimitHit(format!(
                "more than {MAX_STATE_OPS} state writes in one call"
            ))));
        }
        let key = match &op {
            StateOp::Set(k, _) | StateOp::Delete(k) | StateOp::Add(k, _) => k.clone(),
        };
        self.effects.state.push(op);
        self.written.insert(key, after);
        Ok(())
    }

    /// A key's size checked against the host's limit: the reason if not.
    fn check_key(&self, key: &str) -> Result<(), String> {
        let max = self.env.limits.max_state_key_bytes;
        if key.is_empty() || key.len() > max {
            return Err(format!(
                "keys must be 1 to {max} bytes, this one is {}",
                key.len()
            ));
        }
        Ok(())
    }

    /// `batch.next`: closes the event in progress (its effects and note are
    /// its own from now on; its writes stay readable by the next events)
    /// and makes the next one current, with fresh per-event limits.
    pub(crate) fn advance(&mut self, note: Option<String>) -> Option<BatchEvent> {
        if self.batch.as_ref()?.taken > 0 {
            let effects = self.take_effects();
            for (key, value) in &effects.view {
                self.earlier.insert(key.clone(), value.clone());
            }
            self.batch.as_mut()?.done.push((effects, note));
        }
        let batch = self.batch.as_mut()?;
        let next = batch.events.get(batch.taken)?.clone();
        batch.taken += 1;
        batch
            .taken_shared
            .store(batch.taken, std::sync::atomic::Ordering::Relaxed);
        self.event_id.clone_from(&next.event.id);
        self.project_id.clone_from(&next.event.project_id);
        self.chain_depth = next.event.chain_depth;
        self.log_lines = 0;
        self.output_bytes = 0;
        Some(next)
    }

    /// The end of a batch call that returned: closes the event in progress;
    /// each taken event's effects and note, in the order taken.
    pub(crate) fn finish_batch(&mut self, note: Option<String>) -> Vec<(Effects, Option<String>)> {
        let Some(batch) = self.batch.as_ref() else {
            return Vec::new();
        };
        if batch.taken > batch.done.len() {
            let effects = self.take_effects();
            if let Some(batch) = self.batch.as_mut() {
                batch.done.push((effects, note));
            }
        }
        self.batch
            .as_mut()
            .map(|b| std::mem::take(&mut b.done))
            .unwrap_or_default()
    }

    /// Events a batch call has taken so far.
    pub(crate) fn taken(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.taken)
    }
}

/// One event of a batch call, as the guest gets it.
#[derive(Clone)]
pub(crate) struct BatchEvent {
    pub(crate) event: Arc<Event>,
    pub(crate) origin: Origin,
    pub(crate) attempt: u32,
}

/// A batch call's events and cursor.
pub(crate) struct Batch {
    pub(crate) events: Vec<BatchEvent>,
    /// Events handed out so far; the last of them is in progress.
    taken: usize,
    /// Effects and note of each closed event, in the order taken.
    done: Vec<(Effects, Option<String>)>,
    /// `taken`, for the caller to read when the call ended at its deadline
    /// while waiting in an import (the store is dropped then).
    taken_shared: Arc<std::sync::atomic::AtomicUsize>,
}

impl Batch {
    pub(crate) fn new(
        events: Vec<BatchEvent>,
        taken_shared: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        Self {
            events,
            taken: 0,
            done: Vec::new(),
            taken_shared,
        }
    }
}

/// The host API's traits, for one version of the generated bindings: the
/// versions differ in their package, not in these interfaces.
macro_rules! host_api {
    ($version:ident) => {
        mod $version {
            use super::*;
            use crate::bindings::$version::persona::bus::{host, state, types};

        impl types::Host for HostState {}

        impl host::Host for HostState {
            fn log(&mut self, level: types::Level, mut message: String) -> wasmtime::Result<()> {
                let call = &mut self.call;
                call.log_lines += 1;
                if call.log_lines > call.limits.max_log_lines {
                    return Err(wasmtime::Error::new(LimitHit(format!(
                        "log flood: more than {} lines in one call (limits.max_log_lines)",
                        call.limits.max_log_lines
                    ))));
                }
                if message.len() > MAX_LOG_LINE {
                    let mut cut = MAX_LOG_LINE;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                    message.push('…');
                }
                let message = call.secrets.scrub(message);
                call.record(|| {
                    let level = match level {
                        types::Level::Trace => "trace",
                        types::Level::Debug => "debug",
                        types::Level::Info => "info",
                        types::Level::Warn => "warn",
                        types::Level::Error => "error",
                    };
                    format!("log {level}: {message}")
                });
                let (handler, event_id) = (&*call.handler, &call.event_id);
                match level {
                    types::Level::Trace => {
                        tracing::trace!(target: "handler", handler, event_id, "{message}")
                    }
                    types::Level::Debug => {
                        tracing::debug!(target: "handler", handler, event_id, "{message}")
                    }
                    types::Level::Info => tracing::info!(target: "handler", handler, event_id, "{message}"),
                    types::Level::Warn => tracing::warn!(target: "handler", handler, event_id, "{message}"),
                    types::Level::Error => {
                        tracing::error!(target: "handler", handler, event_id, "{message}")
                    }
                }
                Ok(())
            }

            fn publish(
                &mut self,
                new: types::NewEvent,
            ) -> wasmtime::Result<Result<String, types::PublishError>> {
                let call = &mut self.call;
                let depth = call.chain_depth + 1;
                if depth > call.env.limits.max_chain_depth {
                    call.note = Some(format!(
                        "publish refused: chain depth {depth} is above the limit"
                    ));
                    return Ok(Err(types::PublishError::ChainTooDeep(depth)));
                }
                let max = call.limits.max_publishes;
                if call.effects.published.len() >= max as usize {
                    call.note = Some(format!(
                        "publish refused: limit of {max} events per call reached"
                    ));
                    return Ok(Err(types::PublishError::TooMany(max)));
                }
                if let Err(why) = call.spend_output(new.payload.len()) {
                    return Ok(Err(types::PublishError::Invalid(why)));
                }
                let payload = match event::NewEvent::parse_payload(&new.payload) {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(types::PublishError::Invalid(e.to_string()))),
                };
                let mut headers = new.headers;
                headers.push(("parent-event-id".into(), call.event_id.clone()));
                let draft = event::NewEvent {
                    event_type: new.event_type,
                    source_type: new.source_type.unwrap_or_else(|| "persona".into()),
                    // The host names the source: a handler cannot pose as another.
                    source_id: Some(call.handler.to_string()),
                    target_persona_id: new.target_persona_id,
                    project_id: Some(new.project_id.unwrap_or_else(|| call.project_id.clone())),
                    payload: Some(payload),
                    headers,
                    schema_version: None,
                };
                let checked = draft
                    .validate(call.env.limits.event_limits(), depth)
                    .and_then(|event| {
                        call.env.host.check_published(&event)?;
                        Ok(event)
                    });
                match checked {
                    Ok(event) => {
                        let id = event.id.clone();
                        call.effects.published.push(event);
                        Ok(Ok(id))
                    }
                    Err(e) => Ok(Err(types::PublishError::Invalid(e.to_string()))),
                }
            }

            fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
                Ok(self
                    .call
                    .config
                    .get(&key)
                    .cloned()
                    .or_else(|| self.call.secrets.get(&key)))
            }
        }

        impl state::Host for HostState {
            fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
                let value = self.call.current(&key)?;
                self.call.record(|| match &value {
                    Some(v) => format!("state get {key:?} -> {:?}", String::from_utf8_lossy(v)),
                    None => format!("state get {key:?} -> none"),
                });
                Ok(value)
            }

            fn set(
                &mut self,
                key: String,
                value: Vec<u8>,
            ) -> wasmtime::Result<Result<(), types::StateError>> {
                if let Err(e) = self.call.check_key(&key) {
                    return Ok(Err(types::StateError::TooLarge(e)));
                }
                let max = self.call.env.limits.max_state_value_bytes;
                if value.len() > max {
                    return Ok(Err(types::StateError::TooLarge(format!(
                        "values may be {max} bytes, this one is {}",
                        value.len()
                    ))));
                }
                if let Err(why) = self.call.spend_output(key.len() + value.len()) {
                    return Ok(Err(types::StateError::TooLarge(why)));
                }
                let after = Some(value.clone());
                self.call.push_state(StateOp::Set(key, value), after)?;
                Ok(Ok(()))
            }

            fn delete(&mut self, key: String) -> wasmtime::Result<()> {
                self.call.push_state(StateOp::Delete(key), None)
            }

            fn increment(
                &mut self,
                key: String,
                delta: i64,
            ) -> wasmtime::Result<Result<i64, types::StateError>> {
                if let Err(e) = self.call.check_key(&key) {
                    return Ok(Err(types::StateError::TooLarge(e)));
                }
                let current = match self.call.current(&key)? {
                    None => 0,
                    Some(bytes) => match parse_counter(&bytes) {
                        Some(n) => n,
                        None => {
                            return Ok(Err(types::StateError::NotANumber(format!(
                                "`{key}` does not hold a decimal integer"
                            ))));
                        }
                    },
                };
                let new = current.saturating_add(delta);
                self.call
                    .push_state(StateOp::Add(key, delta), Some(new.to_string().into_bytes()))?;
                Ok(Ok(new))
            }
        }
        }
    };
}

host_api!(v1);
host_api!(v2);

impl crate::bindings::v2::persona::bus::batch::Host for HostState {
    fn next(
        &mut self,
    ) -> wasmtime::Result<Option<crate::bindings::v2::persona::bus::types::EventResult>> {
        // A note made before the first event was taken is the first's.
        let note = if self.call.taken() > 0 {
            self.take_note()
        } else {
            None
        };
        let next = self.call.advance(note);
        if let Some(b) = &next {
            self.outbound.next_event(&b.event.id);
        }
        Ok(next.map(|b| super::to_wit_owned(&b.event, &b.origin, b.attempt)))
    }
}
