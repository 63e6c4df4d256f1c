//! Host bindings generated from the WIT contract. Nothing else lives here,
//! so the generated names have one home.
//!
//! - [`v2`]: `persona:bus@0.2.0` (`wit/bus.wit`), the `batch-handler`
//!   world: the host calls `handle` and `handle-batch` through it, and
//!   links `host`, `state` and `batch` at 0.2.0.
//! - [`v2_single`]: the same package's `handler` world, whose `handle` is
//!   also the `handle` of every 0.1.0 component (component types are
//!   checked structurally, and `handle`'s did not change).
//! - [`v1`]: `persona:bus@0.1.0` (`wit/v0.1.0/bus.wit`), linked only so
//!   that components built against it find their imports.

pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "batch-handler",
        // Host imports may trap the guest: that is how a log flood or a
        // state quota stops a handler.
        imports: { default: trappable },
        // Exports are called with `call_async` so that every call can be
        // ended at its deadline, even while the guest waits inside a WASI
        // import (a sleep, a poll, a stream read): see `Runtime::invoke`.
        exports: { default: async },
        // The event handed to `handle` borrows the host's strings: lowering
        // copies them into the guest's memory anyway, so an owned copy made
        // first would copy each field twice per call.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

pub mod v2_single {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "handler",
        imports: { default: trappable },
        exports: { default: async },
        // Its own copy of the interfaces (never linked: `v2` links them),
        // because here `event` is only a parameter and keeps its borrowed
        // form, where `v2` splits it in two (`next` returns one).
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

pub mod v1 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "handler",
        imports: { default: trappable },
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}
