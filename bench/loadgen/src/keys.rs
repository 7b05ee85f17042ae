//! Access keys computed locally, exactly as docs/CONTRACT.md specifies, so opening 10k sockets
//! does not cost 10k `/access` round trips. [`KeyMaker::verify_against`] checks the computation
//! once per server against its real `/access` reply.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Makes access keys for one password (the servers' `secret` is not set in our configs): `v1`
/// keys, or push-serve's `v2` keys granting topics after [`KeyMaker::with_topics`].
#[derive(Clone)]
pub struct KeyMaker {
    secret: [u8; 32],
    expiry: u64,
    /// The granted topics, comma-joined and base64url-encoded, as they appear in a `v2` key.
    topics: Option<String>,
}

impl KeyMaker {
    /// Keys valid for `ttl_secs` from now (the contract's default TTL is 3600 s).
    pub fn new(password: &str, ttl_secs: u64) -> KeyMaker {
        let mut h = Sha256::new();
        h.update(b"push-serve access-key v1\0");
        h.update(password.as_bytes());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        KeyMaker {
            secret: h.finalize().into(),
            expiry: now + ttl_secs,
            topics: None,
        }
    }

    /// The same maker, issuing push-serve `v2` keys that grant `topics` (README: "Topics
    /// granted by the key"). Only push-serve understands them.
    pub fn with_topics(&self, topics: &[&str]) -> KeyMaker {
        use base64::Engine;
        KeyMaker {
            topics: Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topics.join(","))),
            ..self.clone()
        }
    }

    /// The key for `uid` with this maker's expiry.
    pub fn key(&self, uid: &str) -> String {
        self.key_at(uid, self.expiry)
    }

    /// The key for `uid` expiring at `expiry` (unix seconds).
    pub fn key_at(&self, uid: &str, expiry: u64) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC takes any key length");
        let mut key = match &self.topics {
            None => {
                mac.update(format!("v1\n{uid}\n{expiry}").as_bytes());
                format!("v1.{expiry}.")
            }
            Some(topics) => {
                mac.update(format!("v2\n{uid}\n{expiry}\n{topics}").as_bytes());
                format!("v2.{expiry}.{topics}.")
            }
        };
        let tag = mac.finalize().into_bytes();
        for b in &tag[..16] {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }

    /// Compares a key a server issued for `uid` with the local computation for the same expiry.
    pub fn verify_against(&self, uid: &str, issued: &str) -> Result<(), String> {
        let expiry = issued
            .split('.')
            .nth(1)
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or_else(|| format!("/access returned a key of unknown form: {issued:?}"))?;
        let local = self.key_at(uid, expiry);
        if local == issued {
            Ok(())
        } else {
            Err(format!(
                "/access key {issued:?} differs from the locally computed {local:?}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_has_the_contract_form() {
        let k = KeyMaker::new("pw", 3600).key_at("alice", 1_700_000_000);
        assert!(k.starts_with("v1.1700000000."));
        assert_eq!(k.len(), "v1.1700000000.".len() + 32);
        let m = KeyMaker::new("pw", 3600);
        assert!(m.verify_against("alice", &k).is_ok());
        assert!(m.verify_against("bob", &k).is_err());
        let t = m
            .with_topics(&["news", "room:1"])
            .key_at("alice", 1_700_000_000);
        assert!(t.starts_with("v2.1700000000.bmV3cyxyb29tOjE."), "{t}");
    }
}
