//! The signatures of the Pusher protocol, all HMAC-SHA256 under the app's secret, in lowercase
//! hex, compared in constant time:
//! - channel auth (`private-`, `presence-`): `auth` = `<key>:<hmac(socket_id:channel[:channel_data])>`;
//! - user sign-in: `auth` = `<key>:<hmac(socket_id::user::user_data)>`;
//! - the HTTP API: `auth_signature` = `hmac(METHOD\nPATH\nQUERY)`, QUERY being every parameter
//!   but `auth_signature`, keys lowercased, sorted, `key=value` joined with `&`; a body's MD5
//!   in `body_md5`; `auth_timestamp` within [`MAX_CLOCK_SKEW_SECS`] of ours.
//!
//! QUERY is built from the *decoded* parameters, as the SDKs build it (pusher-http-node's
//! `toOrderedArray`, pusher-http-python's `make_query_string`, pusher-http-php's
//! `array_implode`: each joins its parameters' plain values, which it also sends unencoded;
//! an SDK that percent-encodes what it sends still signs the plain values). That text can be
//! split back into parameters one way only if no decoded name holds `&` or `=` and no decoded
//! value holds `&`: otherwise `a=1%26b%3D2` and `a=1&b=2` sign alike, and a captured request
//! could be re-split into other parameters under its signature. Such a request is refused
//! ([`SignatureError::Ambiguous`]); no SDK sends one (channel names, `info` and
//! `filter_by_prefix` cannot hold `&`).

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far an API request's `auth_timestamp` may be from our clock (Pusher's: 600 s). Past
/// it, a captured request cannot be replayed.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// `hmac_sha256(secret, text)` in lowercase hex.
pub fn sign(secret: &str, text: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The MD5 of a request body, in lowercase hex (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `auth` (`<key>:<signature>`) signs `text` for the app with `key` and `secret`.
fn check(auth: &str, key: &str, secret: &str, text: &str) -> bool {
    match auth.split_once(':') {
        Some((k, sig)) => same(k, key) & same(sig, &sign(secret, text)),
        None => false,
    }
}

/// A subscription's `auth` for `channel`; `channel_data` for presence channels.
pub fn channel_auth_ok(
    auth: &str,
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> bool {
    let text = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    check(auth, key, secret, &text)
}

/// A `pusher:signin`'s `auth` for `user_data`.
pub fn signin_ok(auth: &str, key: &str, secret: &str, socket_id: &str, user_data: &str) -> bool {
    check(
        auth,
        key,
        secret,
        &format!("{socket_id}::user::{user_data}"),
    )
}

/// Why an HTTP API request's signature was refused (the reply says which, so a developer can
/// fix a client; none of them reveals anything about the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required parameter is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// `auth_key` is not this app's key.
    #[error("auth_key is not this app's key")]
    WrongKey,
    /// `auth_version` other than 1.0.
    #[error("auth_version must be 1.0")]
    Version,
    /// `auth_timestamp` not a number, or too far from our clock.
    #[error("auth_timestamp must be within {MAX_CLOCK_SKEW_SECS} s of the server's clock")]
    Timestamp,
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the body")]
    BodyMd5,
    /// The signature does not match.
    #[error("invalid auth_signature")]
    Signature,
    /// A decoded parameter name holds `&` or `=`, or a value `&`: the signed text would not
    /// say which parameters were signed.
    #[error(
        "a query parameter's decoded name holds & or =, or its value &: refused, since the \
         signed text could be split into other parameters"
    )]
    Ambiguous,
}

/// Checks an HTTP API request: `params` its query, decoded, in any order.
pub fn check_request(
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    key: &str,
    secret: &str,
    now_secs: u64,
) -> Result<(), SignatureError> {
    check_query(method, path, params, key, secret, now_secs)?;
    check_body(params, body)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// [`check_request`] but for the body: what can be checked before reading it (the signature
/// covers `body_md5`, so a request that passes this was signed with the app's secret).
pub fn check_query(
    method: &str,
    path: &str,
    params: &[(String, String)],
    key: &str,
    secret: &str,
    now_secs: u64,
) -> Result<(), SignatureError> {
    if params
        .iter()
        .any(|(k, v)| k.contains(['&', '=']) || v.contains('&'))
    {
        return Err(SignatureError::Ambiguous);
    }
    let get = |name: &str| param(params, name);
    let signature = get("auth_signature").ok_or(SignatureError::Missing("auth_signature"))?;
    let given_key = get("auth_key").ok_or(SignatureError::Missing("auth_key"))?;
    if !same(given_key, key) {
        return Err(SignatureError::WrongKey);
    }
    if get("auth_version").ok_or(SignatureError::Missing("auth_version"))? != "1.0" {
        return Err(SignatureError::Version);
    }
    let stamp: u64 = get("auth_timestamp")
        .ok_or(SignatureError::Missing("auth_timestamp"))?
        .parse()
        .map_err(|_| SignatureError::Timestamp)?;
    if stamp.abs_diff(now_secs) > MAX_CLOCK_SKEW_SECS {
        return Err(SignatureError::Timestamp);
    }
    let mut signed: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    signed.sort();
    let query: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!("{method}\n{path}\n{}", query.join("&"));
    if !same(signature, &sign(secret, &text)) {
        return Err(SignatureError::Signature);
    }
    Ok(())
}

/// The rest of [`check_request`], once the body is read: a body's MD5 is the signed `body_md5`.
pub fn check_body(params: &[(String, String)], body: &[u8]) -> Result<(), SignatureError> {
    if !body.is_empty() {
        let md5 = param(params, "body_md5").ok_or(SignatureError::Missing("body_md5"))?;
        if !same(md5, &body_md5(body)) {
            return Err(SignatureError::BodyMd5);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked examples of Pusher's protocol documentation.
    #[test]
    fn the_documented_examples_verify() {
        let (key, secret) = ("278d425bdf160c739803", "7ad3773142a6692b25b8");
        assert!(channel_auth_ok(
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
            key,
            secret,
            "1234.1234",
            "private-foobar",
            None
        ));
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert!(channel_auth_ok(
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
            key,
            secret,
            "1234.1234",
            "presence-foobar",
            Some(data)
        ));
        assert!(!channel_auth_ok(
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
            key,
            secret,
            "1234.1235",
            "private-foobar",
            None
        ));
        assert_eq!(body_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn api_requests_are_checked_field_by_field() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = body_md5(body);
        let mut params: Vec<(String, String)> = vec![
            ("auth_key".into(), "k".into()),
            ("auth_timestamp".into(), "1000".into()),
            ("auth_version".into(), "1.0".into()),
            ("body_md5".into(), md5.clone()),
        ];
        let text = format!(
            "POST\n/apps/3/events\nauth_key=k&auth_timestamp=1000&auth_version=1.0&body_md5={md5}"
        );
        params.push(("auth_signature".into(), sign("s", &text)));
        let check = |params: &[(String, String)], body: &[u8], now| {
            check_request("POST", "/apps/3/events", params, body, "k", "s", now)
        };
        assert_eq!(check(&params, body, 1000), Ok(()));
        assert_eq!(check(&params, body, 1600), Ok(()));
        assert_eq!(check(&params, body, 1601), Err(SignatureError::Timestamp));
        assert_eq!(check(&params, b"{}", 1000), Err(SignatureError::BodyMd5));
        let mut forged = params.clone();
        forged[4].1 = sign("wrong secret", &text);
        assert_eq!(check(&forged, body, 1000), Err(SignatureError::Signature));
        assert_eq!(
            check(&params[1..], body, 1000),
            Err(SignatureError::Missing("auth_key"))
        );
    }

    /// `auth_version=1.0&info=x` and `auth_version=1.0%26info%3Dx` would sign alike; the second
    /// is refused, whatever it is signed with.
    #[test]
    fn a_query_that_could_be_resplit_is_refused() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let text = "GET\n/apps/3/channels\nauth_key=k&auth_timestamp=1000&auth_version=1.0&info=x";
        let signature = sign("s", text);
        let check = |params: &[(String, String)]| {
            check_query("GET", "/apps/3/channels", params, "k", "s", 1000)
        };
        let split = [
            pair("auth_key", "k"),
            pair("auth_timestamp", "1000"),
            pair("auth_version", "1.0"),
            pair("info", "x"),
            pair("auth_signature", &signature),
        ];
        assert_eq!(check(&split), Ok(()));
        let joined = [
            pair("auth_key", "k"),
            pair("auth_timestamp", "1000"),
            pair("auth_version", "1.0&info=x"),
            pair("auth_signature", &signature),
        ];
        assert_eq!(check(&joined), Err(SignatureError::Ambiguous));
        let mut keyed = split.clone();
        keyed[3] = pair("info=x&y", "z");
        assert_eq!(check(&keyed), Err(SignatureError::Ambiguous));
        // `=` in a value is not ambiguous (names cannot hold one): checked as usual.
        let mut valued = split.clone();
        valued[3] = pair("info", "x=y");
        assert_eq!(check(&valued), Err(SignatureError::Signature));
    }
}
