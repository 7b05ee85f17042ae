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
//!
//! A page may also present a JWT its backend minted itself (seed 000's subscriber tokens), when
//! `jwt_secret` is set: HS256 only, checked here with the same HMAC-SHA256 and constant-time
//! comparison as our own keys ([`Auth::verify`] tells the two apart by their `v1.`/`v2.` prefix).
//! When the signing material changes while the daemon runs (a config reload that rotates
//! `secret`, or `password` when no `secret` is set), keys signed with the material it replaced
//! keep opening sockets for an overlap window ([`Auth::rotated`]), so pages holding a key
//! issued a moment before the rotation are not all refused at once.

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

/// Longest JWT accepted as an access key, in bytes: the claims are parsed only once the MAC
/// matched, but base64 and the MAC run over the whole token first.
const MAX_JWT_BYTES: usize = 8192;
/// Clock skew allowed for a JWT's `nbf` (a backend whose clock runs a little ahead mints a
/// token that is "not yet valid" here for a moment). `exp` gets none, like our own keys.
const JWT_NBF_LEEWAY_SECS: u64 = 60;
/// Most signing keys a rotation keeps accepting besides the current one: several rotations
/// within one overlap window keep the latest few, not an unbounded list.
const MAX_PREVIOUS_KEYS: usize = 4;

/// Issues and verifies access keys, and checks the backend password.
#[derive(Clone)]
pub struct Auth {
    signing_key: [u8; 32],
    password_digest: [u8; 32],
    ttl_secs: u64,
    jwt: Option<JwtKey>,
    /// Signing keys replaced by a rotation, newest first, each with the unix second until which
    /// keys it signed still verify.
    previous: Vec<([u8; 32], u64)>,
}

/// The `jwt_secret` and what a token may grant.
#[derive(Clone)]
struct JwtKey {
    secret: Vec<u8>,
    max_topics: usize,
}

/// A JWT's header: only `alg` matters, and it must be HS256. `crit` names extensions a
/// receiver must understand, and we understand none.
#[derive(serde::Deserialize)]
struct JwtHeader {
    alg: String,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims push-serve reads; any others are ignored.
#[derive(serde::Deserialize)]
struct JwtClaims {
    uid: JwtUid,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    topics: Option<Vec<String>>,
}

/// `uid` as text, or as a number (PHP samples mint `'uid' => 71`): compared as written.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JwtUid {
    Text(String),
    Number(serde_json::Number),
}

impl JwtUid {
    fn matches(&self, uid: &str) -> bool {
        match self {
            JwtUid::Text(t) => t == uid,
            JwtUid::Number(n) => n.to_string() == uid,
        }
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in a debug dump.
        f.debug_struct("Auth")
            .field("ttl_secs", &self.ttl_secs)
            .field("previous_keys", &self.previous.len())
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
            jwt: None,
            previous: Vec::new(),
        }
    }

    /// `next`, the settings a reload brings, taking over from `self`. If the signing key
    /// changed, keys `self` signed keep verifying for `overlap` from now (and still only until
    /// their own expiry); keys of earlier rotations keep what is left of their windows. The
    /// password is `next`'s alone from now on: the overlap is for keys already in pages' hands.
    pub fn rotated(&self, next: Auth, overlap: std::time::Duration) -> Auth {
        self.rotated_at(next, overlap, now_secs())
    }

    fn rotated_at(&self, mut next: Auth, overlap: std::time::Duration, now: u64) -> Auth {
        let mut previous = Vec::new();
        if next.signing_key != self.signing_key && !overlap.is_zero() {
            // Rounded up: a window of 0.5 s still accepts the key during the current second.
            let until = now.saturating_add(overlap.as_secs_f64().ceil() as u64);
            previous.push((self.signing_key, until));
        }
        previous.extend(
            self.previous
                .iter()
                .filter(|(key, until)| *until > now && *key != next.signing_key)
                .copied(),
        );
        previous.truncate(MAX_PREVIOUS_KEYS);
        next.previous = previous;
        next
    }

    /// Whether keys signed with material other than the current one are still accepted.
    pub fn in_overlap(&self) -> bool {
        let now = now_secs();
        self.previous.iter().any(|(_, until)| *until > now)
    }

    /// Also accepts JWTs signed (HS256) with `secret`, granting at most `max_topics` topics.
    pub fn with_jwt(mut self, secret: &str, max_topics: usize) -> Auth {
        self.jwt = Some(JwtKey {
            secret: secret.as_bytes().to_vec(),
            max_topics,
        });
        self
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
        if !key.starts_with("v1.") && !key.starts_with("v2.") {
            return match &self.jwt {
                Some(jwt) => verify_jwt(jwt, uid, key, now),
                None => Err(KeyError::Invalid),
            };
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
        let signed_by = |signing_key: &[u8; 32]| {
            let expected = mac(signing_key, uid, expiry, topics);
            bool::from(given.ct_eq(&expected[..MAC_BYTES]))
        };
        // The current key, then those a rotation replaced, while their overlap lasts.
        let genuine = signed_by(&self.signing_key)
            || self
                .previous
                .iter()
                .any(|(key, until)| *until > now && signed_by(key));
        if !genuine {
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
        mac(&self.signing_key, uid, expiry, topics)
    }
}

/// HMAC-SHA256 of a key's fields under `signing_key`.
fn mac(signing_key: &[u8; 32], uid: &str, expiry: u64, topics: Option<&str>) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(signing_key)
        .expect("HMAC takes a key of any length");
    let version = if topics.is_some() {
        TOPICS_KEY_VERSION
    } else {
        KEY_VERSION
    };
    mac.update(version.as_bytes());
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

/// Checks a JWT access key: three base64url parts, header `alg` HS256 exactly (so `none` and
/// every other algorithm are refused before anything else is looked at), the MAC over
/// `header.payload` under `jwt_secret` (constant-time), then the claims: `uid` is this uid,
/// `exp` is in the future, `nbf` (if any) not beyond the leeway, `topics` (if any) valid and at
/// most `max_topics`. Every refusal but expiry is [`KeyError::Invalid`], like a bad own key.
fn verify_jwt(jwt: &JwtKey, uid: &str, token: &str, now: u64) -> Result<Vec<String>, KeyError> {
    let invalid = |why: &str| {
        log::debug!("JWT access key refused: {why}");
        KeyError::Invalid
    };
    if token.len() > MAX_JWT_BYTES {
        return Err(invalid("longer than 8 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(mac_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("not three dot-separated parts"));
    };
    let header: JwtHeader = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| invalid("header is not base64url JSON with alg"))?;
    if header.alg != "HS256" {
        return Err(invalid("alg is not HS256"));
    }
    if header.crit.is_some() {
        return Err(invalid("crit extensions are not supported"));
    }
    let given = URL_SAFE_NO_PAD
        .decode(mac_b64)
        .map_err(|_| invalid("signature is not base64url"))?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&jwt.secret)
        .expect("HMAC takes a key of any length");
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(claims_b64.as_bytes());
    // verify_slice compares in constant time, and refuses a truncated MAC.
    mac.verify_slice(&given)
        .map_err(|_| invalid("signature does not match jwt_secret"))?;
    // Only now, with the MAC checked, are the claims trusted and parsed.
    let claims: JwtClaims = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or_else(|| invalid("claims are not JSON with uid and exp"))?;
    if !claims.uid.matches(uid) {
        return Err(invalid("uid claim is another uid"));
    }
    // JSON has no NaN, so these comparisons are total.
    if claims
        .nbf
        .is_some_and(|nbf| nbf > (now + JWT_NBF_LEEWAY_SECS) as f64)
    {
        return Err(invalid("not valid yet (nbf)"));
    }
    if claims.exp <= now as f64 {
        return Err(KeyError::Expired);
    }
    let topics = claims.topics.unwrap_or_default();
    if topics.len() > jwt.max_topics || !topics.iter().all(|t| valid_topic(t)) {
        return Err(invalid("topics claim has an invalid name or too many"));
    }
    Ok(topics)
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
    use std::time::Duration;

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

    /// A JWT as a backend's library mints it: header and claims as given, HS256 under `secret`.
    fn jwt(secret: &str, header: &str, claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let c = URL_SAFE_NO_PAD.encode(claims);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{h}.{c}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{h}.{c}.{sig}")
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn a_jwt_signed_with_jwt_secret_opens_for_its_uid_until_exp() {
        let a = auth().with_jwt("jwt-secret", 2);
        let token = jwt(
            "jwt-secret",
            HS256,
            r#"{"uid":"alice","exp":2000,"app":"x"}"#,
        );
        assert_eq!(a.verify_at("alice", &token, 1999), Ok(vec![]));
        assert_eq!(a.verify_at("alice", &token, 2000), Err(KeyError::Expired));
        assert_eq!(a.verify_at("bob", &token, 0), Err(KeyError::Invalid));
        // A numeric uid, as PHP sends it; topics granted.
        let token = jwt(
            "jwt-secret",
            HS256,
            r#"{"uid":71,"exp":2000.5,"nbf":100,"topics":["news","room:1"]}"#,
        );
        assert_eq!(
            a.verify_at("71", &token, 100),
            Ok(vec!["news".to_string(), "room:1".to_string()])
        );
        // nbf: a minute of leeway, then refused.
        assert_eq!(
            a.verify_at("71", &token, 40),
            Ok(vec!["news".into(), "room:1".into()])
        );
        assert_eq!(a.verify_at("71", &token, 39), Err(KeyError::Invalid));
        // Without jwt_secret, no JWT opens anything.
        assert_eq!(auth().verify_at("71", &token, 100), Err(KeyError::Invalid));
    }

    #[test]
    fn forged_none_and_other_algorithm_jwts_are_refused() {
        let a = auth().with_jwt("jwt-secret", 2);
        let claims = r#"{"uid":"alice","exp":2000}"#;
        let good = jwt("jwt-secret", HS256, claims);
        let mut bad = vec![
            jwt("another-secret", HS256, claims),
            jwt("jwt-secret", r#"{"alg":"HS384"}"#, claims),
            jwt("jwt-secret", r#"{"alg":"hs256"}"#, claims),
            jwt("jwt-secret", r#"{"alg":"HS256","crit":["b64"]}"#, claims),
            jwt("jwt-secret", r#"{"typ":"JWT"}"#, claims),
            jwt("jwt-secret", HS256, r#"{"uid":"alice"}"#),
            jwt(
                "jwt-secret",
                HS256,
                r#"{"uid":"alice","exp":2000,"topics":["a,b"]}"#,
            ),
            jwt(
                "jwt-secret",
                HS256,
                r#"{"uid":"alice","exp":2000,"topics":["a","b","c"]}"#,
            ),
            jwt("jwt-secret", HS256, r#"{"uid":["alice"],"exp":2000}"#),
            // alg none: header and claims as given, no signature.
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(claims)
            ),
            format!("{good}.x"),
            good[..good.len() - 2].to_string(),
            "a.b.c".to_string(),
            "eyJ".repeat(4000),
        ];
        // The claims swapped for another uid's under the same signature.
        let parts: Vec<&str> = good.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(r#"{"uid":"alice","exp":99999}"#);
        bad.push(format!("{}.{other}.{}", parts[0], parts[2]));
        for token in &bad {
            assert_eq!(
                a.verify_at("alice", token, 0),
                Err(KeyError::Invalid),
                "{token}"
            );
        }
        assert_eq!(a.verify_at("alice", &good, 0), Ok(vec![]));
    }

    #[test]
    fn keys_of_the_replaced_secret_verify_during_the_overlap_only() {
        let old = Auth::new("old secret", "old password", 600);
        let key = old.issue_at("alice", 5000);
        let new = old.rotated_at(
            Auth::new("new secret", "new password", 600),
            Duration::from_secs(60),
            1000,
        );
        // Within the window: the old key opens sockets, for its uid only.
        assert_eq!(new.verify_at("alice", &key, 1059), Ok(vec![]));
        assert_eq!(new.verify_at("bob", &key, 1059), Err(KeyError::Invalid));
        // Past it, invalid (not "expired": the key itself had time left).
        assert_eq!(new.verify_at("alice", &key, 1060), Err(KeyError::Invalid));
        // A key's own expiry still holds within the window.
        let short = old.issue_at("alice", 1010);
        assert_eq!(new.verify_at("alice", &short, 1020), Err(KeyError::Expired));
        // The password is the new one alone.
        assert!(new.check_password("new password") && !new.check_password("old password"));
        // New keys are signed with the new secret.
        let fresh = new.issue_at("alice", 5000);
        assert_eq!(
            Auth::new("new secret", "x", 1).verify_at("alice", &fresh, 1000),
            Ok(vec![])
        );

        // No overlap: refused at once.
        let strict = old.rotated_at(Auth::new("new secret", "p", 600), Duration::ZERO, 1000);
        assert_eq!(
            strict.verify_at("alice", &key, 1000),
            Err(KeyError::Invalid)
        );
        // A reload that keeps the secret opens no window (and closes none).
        let same = new.rotated_at(
            Auth::new("new secret", "other", 600),
            Duration::from_secs(60),
            1010,
        );
        assert_eq!(same.verify_at("alice", &key, 1059), Ok(vec![]));
        assert_eq!(same.previous.len(), 1);
        // Rotating back to the old secret makes its keys current again, without a window entry.
        let back = new.rotated_at(
            Auth::new("old secret", "p", 600),
            Duration::from_secs(60),
            1010,
        );
        assert_eq!(back.verify_at("alice", &key, 4999), Ok(vec![]));
        assert!(back.previous.iter().all(|(k, _)| *k != old.signing_key));
    }

    #[test]
    fn rotations_keep_a_bounded_number_of_previous_keys() {
        let mut auth = Auth::new("s0", "p", 600);
        for i in 1..=10 {
            auth = auth.rotated_at(
                Auth::new(&format!("s{i}"), "p", 600),
                Duration::from_secs(60),
                1000,
            );
        }
        assert_eq!(auth.previous.len(), MAX_PREVIOUS_KEYS);
    }

    #[test]
    fn password_check() {
        let a = auth();
        assert!(a.check_password("abc123"));
        assert!(!a.check_password("abc12"));
        assert!(!a.check_password(""));
    }
}
