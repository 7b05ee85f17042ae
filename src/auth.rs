//! Backend password checks and access keys.
//!
//! An access key is `v1.<expiry>.<mac>`: `expiry` in unix seconds, `mac` the first 16 bytes of
//! HMAC-SHA256 over `"v1\n" + uid + "\n" + expiry`, in lowercase hex. The signing key is
//! SHA-256 of a label and the configured `secret` (or `password`). So a key:
//! - is bound to one uid and cannot be forged or moved to another uid without the secret;
//! - needs no server state: any number of tabs may use it, and it survives a restart;
//! - stops opening sockets at its expiry (a socket already open stays open).
//!
//! Every comparison of secret material is constant-time.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_VERSION: &str = "v1";
const MAC_BYTES: usize = 16;

/// Why an access key was refused. The reason reaches the client (it helps a page decide whether
/// to fetch a fresh key) but never the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `access_key` parameter, or an empty one.
    #[error("missing access_key")]
    Missing,
    /// Not of the `v1.<expiry>.<mac>` form, or the MAC does not match this uid.
    #[error("invalid access_key")]
    Invalid,
    /// Well-formed and genuine, but past its expiry: ask the backend for a new one.
    #[error("access_key expired")]
    Expired,
}

/// Issues and verifies access keys, and checks the backend password.
#[derive(Clone)]
pub struct Auth {
    signing_key: [u8; 32],
    password_digest: [u8; 32],
    ttl_secs: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in a debug dump.
        f.debug_struct("Auth")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `key_material` is the configured secret (or the password); `password` is what backends
    /// must present; keys live `ttl_secs`.
    pub fn new(key_material: &str, password: &str, ttl_secs: u64) -> Auth {
        let mut h = Sha256::new();
        h.update(b"push-serve access-key v1\0");
        h.update(key_material.as_bytes());
        Auth {
            signing_key: h.finalize().into(),
            password_digest: Sha256::digest(password.as_bytes()).into(),
            ttl_secs,
        }
    }

    /// Constant-time password check. Both sides are hashed first, so neither the length nor
    /// any prefix of the password leaks through timing.
    pub fn check_password(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&self.password_digest).into()
    }

    /// A fresh key for `uid`, valid for the configured lifetime from now.
    pub fn issue(&self, uid: &str) -> String {
        self.issue_at(uid, now_secs().saturating_add(self.ttl_secs))
    }

    /// A key for `uid` expiring at `expiry` (unix seconds).
    pub fn issue_at(&self, uid: &str, expiry: u64) -> String {
        let mac = self.mac(uid, expiry);
        let mut key = format!("{KEY_VERSION}.{expiry}.");
        for b in &mac[..MAC_BYTES] {
            key.push(char::from(HEX[usize::from(b >> 4)]));
            key.push(char::from(HEX[usize::from(b & 15)]));
        }
        key
    }

    /// Checks that `key` was issued for `uid` by this server's secret and has not expired.
    pub fn verify(&self, uid: &str, key: &str) -> Result<(), KeyError> {
        self.verify_at(uid, key, now_secs())
    }

    fn verify_at(&self, uid: &str, key: &str, now: u64) -> Result<(), KeyError> {
        if key.is_empty() {
            return Err(KeyError::Missing);
        }
        let mut parts = key.splitn(3, '.');
        let (Some(KEY_VERSION), Some(expiry), Some(mac_hex)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyError::Invalid);
        };
        // Digits only: `u64::from_str` would also take a leading `+`, giving one key two spellings.
        if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyError::Invalid);
        }
        let expiry: u64 = expiry.parse().map_err(|_| KeyError::Invalid)?;
        let given = decode_hex::<MAC_BYTES>(mac_hex).ok_or(KeyError::Invalid)?;
        let expected = self.mac(uid, expiry);
        if !bool::from(given.ct_eq(&expected[..MAC_BYTES])) {
            return Err(KeyError::Invalid);
        }
        if expiry <= now {
            return Err(KeyError::Expired);
        }
        Ok(())
    }

    fn mac(&self, uid: &str, expiry: u64) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.signing_key)
            .expect("HMAC takes a key of any length");
        mac.update(KEY_VERSION.as_bytes());
        mac.update(b"\n");
        mac.update(uid.as_bytes());
        mac.update(b"\n");
        mac.update(expiry.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex only, exactly `N` bytes; anything else is `None`.
fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new("abc123", "abc123", 60)
    }

    #[test]
    fn key_round_trips_for_its_uid_only() {
        let a = auth();
        let key = a.issue("alice");
        assert_eq!(a.verify("alice", &key), Ok(()));
        assert_eq!(a.verify("bob", &key), Err(KeyError::Invalid));
        assert_eq!(a.verify("alice", ""), Err(KeyError::Missing));
    }

    #[test]
    fn key_from_another_secret_is_invalid() {
        let key = Auth::new("other", "abc123", 60).issue("alice");
        assert_eq!(auth().verify("alice", &key), Err(KeyError::Invalid));
    }

    #[test]
    fn tampered_keys_are_invalid() {
        let a = auth();
        let key = a.issue_at("alice", 2_000_000_000);
        let later = key.replace("2000000000", "2000000001");
        let upper = key.to_uppercase().replacen("V1", "v1", 1);
        let plus = key.replace(".2000000000.", ".+2000000000.");
        for bad in [
            later.as_str(),
            upper.as_str(),
            plus.as_str(),
            "v1..",
            "v1.1.zz",
            "v2.1.00",
            "x",
        ] {
            assert_eq!(
                a.verify_at("alice", bad, 0),
                Err(KeyError::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn key_expires() {
        let a = auth();
        let key = a.issue_at("alice", 1000);
        assert_eq!(a.verify_at("alice", &key, 999), Ok(()));
        assert_eq!(a.verify_at("alice", &key, 1000), Err(KeyError::Expired));
    }

    #[test]
    fn password_check() {
        let a = auth();
        assert!(a.check_password("abc123"));
        assert!(!a.check_password("abc12"));
        assert!(!a.check_password(""));
    }
}
