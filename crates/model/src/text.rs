//! Helpers for the TOML files the host reads (config, manifests).

/// 1-based line of a byte span in `text` (for TOML errors).
pub fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    let at = span.map_or(0, |s| s.start.min(text.len()));
    text[..at].matches('\n').count() + 1
}
