//! Handlers in OCI registries: components pushed and pulled as the CNCF
//! Wasm OCI artifact (`application/wasm` layer, `application/vnd.wasm.config.v0+json`
//! config: what `wkg oci push/pull` and wasmCloud store), and signatures in
//! cosign's format, verified offline with the public keys a host trusts.
//!
//! | module      | what it is |
//! |-------------|------------|
//! | [`client`]  | push, pull by tag or digest, resolve a tag, with credentials that never print |
//! | [`cosign`]  | cosign-compatible signatures: of a pushed component (a `sha256-<hex>.sig` manifest beside it) and of a file (`cosign sign-blob`) |
//!
//! It knows registries and signatures, nothing of the host.

pub mod client;
pub mod cosign;

pub use client::{Credentials, OciClient, OciError, Pulled};
pub use cosign::{SignatureError, Signed, TrustedKeys};
