//! [`Secret`]: a config value that must never reach a log line (the password, signing keys,
//! Pusher app secrets, a Redis URL that may hold credentials).

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What a secret's value is shown as.
pub const HIDDEN: &str = "(hidden)";

/// A config value that never prints: `Debug` shows [`HIDDEN`], there is no `Display`, and it
/// serializes as [`HIDDEN`] inside [`redacted`] (how a reload shows what changed). Code that
/// needs the value asks for it by name ([`Secret::expose`]), so every use is easy to find;
/// there is no `Deref`, which would let `format!("{}", &*secret)` compile.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the code that signs or compares with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl PartialEq<str> for Secret {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({HIDDEN})")
    }
}

thread_local! {
    static REDACTING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every [`Secret`] serializing as [`HIDDEN`] on this thread: a config turned
/// into text for people to read.
pub fn redacted<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            REDACTING.with(|r| r.set(self.0));
        }
    }
    let _reset = Reset(REDACTING.with(|r| r.replace(true)));
    f()
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REDACTING.with(Cell::get) {
            serializer.serialize_str(HIDDEN)
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_shows_only_inside_its_owner_never_in_text_for_people() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "Secret((hidden))");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
        let shown = redacted(|| serde_json::to_string(&Some(&s)).unwrap());
        assert_eq!(shown, "\"(hidden)\"");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"hunter2\"",
            "only inside"
        );
        assert_eq!(s.expose(), "hunter2");
        assert!(s == "hunter2");
    }
}
