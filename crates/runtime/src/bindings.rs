//! Host bindings generated from `wit/bus.wit`. Nothing else lives here, so
//! the generated names (`persona::bus::types::Event`, `Handler`,
//! `HandlerPre`) have one home.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "handler",
    // Host imports may trap the guest: that is how a log flood or a state
    // quota stops a handler.
    imports: { default: trappable },
    // `handle` is called with `call_async` so that every call can be ended
    // at its deadline, even while the guest waits inside a WASI import
    // (a sleep, a poll, a stream read): see `runtime::invoke`.
    exports: { default: async },
    // The event handed to `handle` borrows the host's strings: lowering
    // copies them into the guest's memory anyway, so an owned copy made
    // first would copy each field twice per call.
    ownership: Borrowing { duplicate_if_necessary: true },
});
