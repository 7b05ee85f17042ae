//! Backend password checks and access keys.
//!
//! An access key is `v1.<expiry>.<mac>`: `expiry` in unix seconds, `mac` the first 16 bytes of
//! HMAC-SHA256 over `"v1\n" + uid + "\n" + expiry`, in lowercase hex. A key that also grants
//! topics is `v2.<expiry>.<topics>.<mac>`, `topics` being the comma-joined topic names in
//! unpadded base64url and the MAC taken over `"v2\n" + uid + "\n" + expiry + "\n" + topics`.
//! The signing key is SHA-256 of a label and the configured `secret` (or `password`). So a key:
//! - is bound to one uid and cannot be forged or moved to another uid without the secret;
//! - needs no server state: any number of tabs may use it, and it survives a restart;
//! - stops opening sockets at its expiry (a socket already open stays open).
//!
//! Every comparison of secret material is constant-time.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const KEY_VERSION: &str = "v1";
const TOPICS_KEY_VERSION: &str = "v2";
const MAC_BYTES: usize = 16;
/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 100;

/// Whether `name` is a usable topic: 1 to 100 bytes of ASCII letters, digits and `_ - . : @ /`
/// (no comma, which separates topics in keys and queries).
pub fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b))
}

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
        let mut key = format!("{KEY_VERSION}.{expiry}.");
        push_hex(&mut key, &self.mac(uid, expiry, None));
        key
    }

    /// A fresh key for `uid` that also lets its sockets follow `topics` (each checked with
    /// [`valid_topic`] by the caller). Without topics it is the plain `v1` key.
    pub fn issue_with_topics(&self, uid: &str, topics: &[String]) -> String {
        self.issue_with_topics_at(uid, topics, now_secs().saturating_add(self.ttl_secs))
    }

    /// [`Auth::issue_with_topics`] with an explicit expiry.
    pub fn issue_with_topics_at(&self, uid: &str, topics: &[String], expiry: u64) -> String {
        if topics.is_empty() {
            return self.issue_at(uid, expiry);
        }
        let encoded = URL_SAFE_NO_PAD.encode(topics.join(","));
        let mut key = format!("{TOPICS_KEY_VERSION}.{expiry}.{encoded}.");
        push_hex(&mut key, &self.mac(uid, expiry, Some(&encoded)));
        key
    }

    /// Checks that `key` was issued for `uid` by this server's secret and has not expired;
    /// returns the topics it grants (none for a `v1` key).
    pub fn verify(&self, uid: &str, key: &str) -> Result<Vec<String>, KeyError> {
        self.verify_at(uid, key, now_secs())
    }

    fn verify_at(&self, uid: &str, key: &str, now: u64) -> Result<Vec<String>, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Missing);
        }
        let parts: Vec<&str> = key.splitn(5, '.').collect();
        let (expiry, topics, mac_hex) = match parts[..] {
            [KEY_VERSION, expiry, mac] => (expiry, None, mac),
            [TOPICS_KEY_VERSION, expiry, topics, mac] if !topics.is_empty() => {
                (expiry, Some(topics), mac)
            }
            _ => return Err(KeyError::Invalid),
        };
        // Canonical decimal only, so every key has exactly one spelling: `u64::from_str` would
        // also take a leading `+` or zeros, and the MAC covers the parsed number.
        if expiry.is_empty()
            || expiry.len() > 20
            || !expiry.bytes().all(|b| b.is_ascii_digit())
            || (expiry.len() > 1 && expiry.starts_with('0'))
        {
            return Err(KeyError::Invalid);
        }
        let expiry: u64 = expiry.parse().map_err(|_| KeyError::Invalid)?;
        let given = decode_hex::<MAC_BYTES>(mac_hex).ok_or(KeyError::Invalid)?;
        let expected = self.mac(uid, expiry, topics);
        if !bool::from(given.ct_eq(&expected[..MAC_BYTES])) {
            return Err(KeyError::Invalid);
        }
        if expiry <= now {
            return Err(KeyError::Expired);
        }
        // Only now, with the MAC checked, is the topic list trusted and decoded.
        let Some(topics) = topics else {
            return Ok(Vec::new());
        };
        let joined = URL_SAFE_NO_PAD
            .decode(topics)
            .map_err(|_| KeyError::Invalid)?;
        let joined = String::from_utf8(joined).map_err(|_| KeyError::Invalid)?;
        Ok(joined.split(',').map(str::to_owned).collect())
    }

    fn mac(&self, uid: &str, expiry: u64, topics: Option<&str>) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.signing_key)
            .expect("HMAC takes a key of any length");
        mac.update(
            if topics.is_some() {
                TOPICS_KEY_VERSION
            } else {
                KEY_VERSION
            }
            .as_bytes(),
        );
        mac.update(b"\n");
        mac.update(uid.as_bytes());
        mac.update(b"\n");
        mac.update(expiry.to_string().as_bytes());
        if let Some(topics) = topics {
            mac.update(b"\n");
            mac.update(topics.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }
}

fn push_hex(out: &mut String, mac: &[u8; 32]) {
    for b in &mac[..MAC_BYTES] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
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
        assert_eq!(a.verify("alice", &key), Ok(vec![]));
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
        let zero = key.replace(".2000000000.", ".02000000000.");
        for bad in [
            later.as_str(),
            upper.as_str(),
            plus.as_str(),
            zero.as_str(),
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
        assert_eq!(a.verify_at("alice", &key, 999), Ok(vec![]));
        assert_eq!(a.verify_at("alice", &key, 1000), Err(KeyError::Expired));
    }

    #[test]
    fn topics_are_signed_into_the_key() {
        let a = auth();
        let topics = vec!["news".to_string(), "room:42".to_string()];
        let key = a.issue_with_topics_at("alice", &topics, 2_000_000_000);
        assert!(key.starts_with("v2.2000000000."));
        assert_eq!(a.verify_at("alice", &key, 0), Ok(topics));
        assert_eq!(a.verify_at("bob", &key, 0), Err(KeyError::Invalid));
        // Swapping in another topic list breaks the MAC.
        let other = a.issue_with_topics_at("alice", &["admin".to_string()], 2_000_000_000);
        let parts: Vec<&str> = key.split('.').collect();
        let other_topics = other.split('.').nth(2).unwrap();
        let forged = format!("{}.{}.{}.{}", parts[0], parts[1], other_topics, parts[3]);
        assert_eq!(a.verify_at("alice", &forged, 0), Err(KeyError::Invalid));
        assert!(valid_topic("room:42") && !valid_topic("a,b") && !valid_topic(""));
    }

    #[test]
    fn password_check() {
        let a = auth();
        assert!(a.check_password("abc123"));
        assert!(!a.check_password("abc12"));
        assert!(!a.check_password(""));
    }
}
