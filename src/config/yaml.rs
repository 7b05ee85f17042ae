//! Reading `conf.yaml`: parsing, the keys a file may hold, and errors in plain words that
//! name the key and its line.

use super::validate::Range;
use super::*;

impl Config {
    /// Reads and validates a YAML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `origin` names the source in errors.
    ///
    /// `password` and `secret` are taken as the text written, so `password: 123123` is the
    /// string `123123` (the seed's habit). A value YAML itself reads as something else
    /// (`0x1F` is 31, `1e3` is 1000, `true`, `null`) must be quoted: other tools reading the same
    /// file would otherwise disagree with push-serve about the password.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let in_file = |line: Option<usize>, message: String| ConfigError::Parse {
            path: origin.to_string(),
            line,
            message,
        };
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            let (line, message) = explain(&e, text);
            in_file(line, message)
        })?;
        // It parsed as a Config just above, so it parses as YAML.
        let values: Value = serde_yaml::from_str(text).unwrap_or(Value::Null);
        for (key, written) in [
            ("password", Some(config.password.expose())),
            ("secret", config.secret.as_ref().map(Secret::expose)),
            ("jwt_secret", config.jwt_secret.as_ref().map(Secret::expose)),
            (
                "callback_secret",
                config.callback_secret.as_ref().map(Secret::expose),
            ),
        ] {
            if !read_as_written(values.get(key), written) {
                return Err(in_file(
                    line_of(text, key),
                    format!(
                        "`{key}` must be text, but YAML reads this value as a number, \
                         true/false or null: put it in quotes"
                    ),
                ));
            }
        }
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { field, .. } => {
                let top = field.split('.').next().unwrap_or(field);
                in_file(line_of(text, top), e.to_string())
            }
            e => e,
        })?;
        Ok(config)
    }
}

/// The keys a config file may have, as serde's derive lists them for [`Config`] (so a new field
/// is known here without a second list to keep).
pub fn known_keys() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// A deserializer that only records the field names `Config` asks for, then stops.
    struct FieldNames;
    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<T: std::fmt::Display>(_: T) -> Found {
            Found(&[])
        }
    }
    impl<'de> de::Deserializer<'de> for FieldNames {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    match Config::deserialize(FieldNames) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

/// The known key nearest to a misspelt one, if it is near enough to be what was meant.
pub(super) fn closest_key(unknown: &str) -> Option<&'static str> {
    known_keys()
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|&(distance, key)| distance <= unknown.len().max(key.len()) / 2)
        .min()
        .map(|(_, key)| key)
}

/// Levenshtein distance over bytes (keys are ASCII).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The 1-based line where `key:` is set, if it is written as a block mapping key.
pub(super) fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// Whether YAML reads `value` as the text push-serve took (`written`): any string, plain decimal
/// digits (no leading zero, which YAML 1.1 tools read as octal), or nothing at all.
pub(super) fn read_as_written(value: Option<&Value>, written: Option<&str>) -> bool {
    match (value, written) {
        (None | Some(Value::String(_)), _) | (Some(Value::Null), None | Some("")) => true,
        (Some(Value::Number(_)), Some(text)) => {
            text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'))
        }
        _ => false,
    }
}

/// serde_yaml's error in plain words, with the line it is on when known.
pub(super) fn explain(e: &serde_yaml::Error, text: &str) -> (Option<usize>, String) {
    let yaml_line = e.location().map(|l| l.line());
    let full = e.to_string();
    // serde_yaml appends " at line L column C"; the line is reported separately.
    let message = match full.rfind(" at line ") {
        Some(i) if yaml_line.is_some() => &full[..i],
        _ => full.as_str(),
    };
    let backticked = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    if let Some(key) = backticked("unknown field `") {
        let hint = match closest_key(&key) {
            Some(known) => format!("did you mean `{known}`?"),
            None => "README.md's Configuration table lists every key".to_owned(),
        };
        return (
            line_of(text, &key).or(yaml_line),
            format!("unknown key `{key}`: {hint}"),
        );
    }
    if let Some(key) = backticked("duplicate field `") {
        let last = text
            .lines()
            .enumerate()
            .filter(|(_, line)| line_of(line, &key).is_some())
            .last()
            .map(|(i, _)| i + 1);
        return (
            last.or(yaml_line),
            format!("`{key}` is set twice: keep one of the lines"),
        );
    }
    // "send_queue_frames: invalid type: string \"many\", expected usize"; list elements are
    // "allowed_origins[1]: …".
    if let Some((path, problem)) = message.split_once(": ") {
        let key = path.split('[').next().unwrap_or(path);
        // A nested section's field (`pusher.apps[0].secret`): name the whole path.
        if let Some((top, _)) = key.split_once('.') {
            if known_keys().contains(&top) {
                let problem = problem
                    .replace("unknown field", "unknown key")
                    .replace("invalid type: ", "");
                return (
                    line_of(text, top).or(yaml_line),
                    format!("`{path}`: {problem}"),
                );
            }
        }
        if let Some(&key) = known_keys().iter().find(|k| **k == key) {
            let expected = problem.rsplit(", expected ").next().unwrap_or("");
            let got = serde_yaml::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.get(key).and_then(shown))
                .filter(|_| !is_secret(key) && !path.contains('['))
                .map(|v| format!(", got {v}"))
                .unwrap_or_default();
            return (
                line_of(text, key).or(yaml_line),
                format!("`{key}` {}{got}", requirement(key, expected)),
            );
        }
    }
    if message.contains("expected struct Config") {
        return (
            yaml_line,
            "must be `key: value` lines, one setting per line (see the shipped conf.yaml)"
                .to_owned(),
        );
    }
    (yaml_line, format!("not valid YAML: {message}"))
}

pub(super) fn is_secret(key: &str) -> bool {
    matches!(
        key,
        "password" | "secret" | "callback_secret" | "jwt_secret" | "redis_url" | "redis_cluster"
    )
}

/// A scalar value as the operator wrote it, short; `None` for lists and mappings.
pub(super) fn shown(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > 40 => {
            format!("\"{}…\"", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(_) => return None,
    };
    Some(text)
}

/// What `key` accepts, in words: its range for numbers, else from the type serde expected.
pub(super) fn requirement(key: &str, expected: &str) -> String {
    if let Some(range) = Range::of(key) {
        return range.rule();
    }
    let words = match key {
        "addr" => "an IP:port address such as 127.0.0.1:8080",
        "real_ip_header" => "a header name such as X-Forwarded-For",
        "allowed_origins" => "a list of origins such as [\"https://shop.example.com\"]",
        "log_level" => "a level such as info or debug",
        _ => match expected {
            "a string" | "a borrowed string" => "a string",
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number ≥ 0",
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
            "f32" | "f64" => "a number",
            "a boolean" => "true or false",
            "a sequence" => "a list",
            other => return format!("must be {other}"),
        },
    };
    format!("must be {words}")
}
