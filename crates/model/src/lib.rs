//! The model of persona-bus: the values every layer above speaks in, and
//! the pure rules over them. No I/O beyond reading a manifest file, and no
//! dependency on any other crate of the workspace.
//!
//! | module       | what it is |
//! |--------------|------------|
//! | [`event`]    | the event, its status, input validation, schema refusals |
//! | [`matching`] | subscriptions and which of them want an event |
//! | [`manifest`] | handler manifests (`name.toml`), retry policy |
//! | [`rollout`]    | `[rollout]`: shadow and canary versions of a handler |
//! | [`secrets`]  | where a manifest's secret values come from |
//! | [`outbound`]   | where a handler's outbound HTTP may go |
//! | [`outcome`]  | what a handler run produced and what happens next |
//! | [`limits`]   | `[limits]`: the ceilings on events and handlers |
//! | [`alert`]    | an alert of the host's own rules |
//! | [`fast_map`] | the hash maps of the hot paths |
//! | [`settings`] | what the sections of the configuration share |
//! | [`sync`]     | the one way the workspace takes its locks |
//! | [`text`]     | line numbers for TOML errors |

pub mod alert;
pub mod event;
pub mod fast_map;
pub mod limits;
pub mod manifest;
pub mod matching;
pub mod outbound;
pub mod outcome;
pub mod rollout;
pub mod secrets;
pub mod settings;
pub mod sync;
pub mod text;
