//! HMAC-SHA256 signatures in GitHub's form, `sha256=<hex>`: checked on
//! incoming webhooks (`api::webhooks`) and made on the host's own alert
//! notices (`alerts`), and the lower-case hex the host writes digests in.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use persona_bus_model::text::hex;

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Checks `signature` (`sha256=<hex>`) over `body`, in constant time.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> Result<(), &'static str> {
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or("x-hub-signature-256 must look like sha256=<hex>")?;
    let given = decode_hex(hex).ok_or("x-hub-signature-256 is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "bad secret")?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| "signature does not match")
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let signed = sign("s3cret", b"{}");
        assert_eq!(verify("s3cret", b"{}", &signed), Ok(()));
        assert!(verify("other", b"{}", &signed).is_err());
        assert!(verify("s3cret", b"{ }", &signed).is_err());
        assert!(verify("s3cret", b"{}", signed.trim_start_matches("sha256=")).is_err());
        assert!(verify("s3cret", b"{}", "sha256=zz").is_err());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
