//! Text helpers: lines of the TOML files the host reads (config,
//! manifests), and the lower-case hex it writes digests in.

/// 1-based line of a byte span in `text` (for TOML errors).
pub fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    let at = span.map_or(0, |s| s.start.min(text.len()));
    text[..at].matches('\n').count() + 1
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
