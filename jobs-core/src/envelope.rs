//! The wire format: one JSON object per job, readable and writable from any
//! language (see `docs/PROTOCOL.md`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::job::JobId;

/// A job as it travels through the backend.
///
/// Fields this version does not know are kept in `extra` and written back on
/// retry, so a newer producer's additions survive an older worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The job's unique id.
    pub jid: JobId,
    /// The registered name (or an alias of it).
    pub job: String,
    /// The signature version the payload was written at (omitted when 1).
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u32,
    /// The queue it was enqueued on; omitted in a queue's own list, where the
    /// key says it, and filled in by the worker from where it was fetched.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue: String,
    /// Arguments keyed by parameter name.
    #[serde(default = "empty_args")]
    pub args: serde_json::Value,
    /// Attempts made so far (0 until the first run ends; omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Milliseconds since the Unix epoch when it was first enqueued.
    #[serde(default)]
    pub enqueued_at: u64,
    /// The last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch of the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<u64>,
    /// How often a worker that only knows older versions put it back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferred: u32,
    /// Fields written by newer producers, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Envelope {
    /// A new job's envelope: a fresh id, no attempt yet, enqueued now.
    pub fn new(job: &str, version: u32, queue: &str, args: serde_json::Map<String, serde_json::Value>) -> Self {
        Self {
            jid: JobId::new(),
            job: job.to_owned(),
            version,
            queue: queue.to_owned(),
            args: serde_json::Value::Object(args),
            attempt: 0,
            enqueued_at: now_millis(),
            error: None,
            failed_at: None,
            deferred: 0,
            extra: serde_json::Map::new(),
        }
    }

    /// Parses a payload.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Encodes the payload.
    pub fn to_json(&self) -> String {
        // An envelope is a struct of strings, numbers and JSON values: encoding cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A payload that is not a valid envelope: what could be read of it, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Malformed {
    pub jid: Option<String>,
    pub job: Option<String>,
    /// The signature version, when the payload says one that reads (1 when it
    /// says none): the dead entry keeps it, so `versions` counts it there.
    pub version: Option<u32>,
    pub reason: String,
    /// The stored bytes were not UTF-8: the text kept has U+FFFD for them, so
    /// it never runs, not even retried from the dead set.
    pub unreadable: bool,
}

impl Malformed {
    /// The message stored with the payload in the dead set.
    pub fn message(&self) -> String {
        match &self.job {
            Some(job) => format!("job `{job}`: malformed payload: {}", self.reason),
            None => format!("malformed payload: {}", self.reason),
        }
    }
}

/// The envelope as most payloads are: known fields only, each of its type.
/// [`decode`] tries it first, because it skips the generic JSON tree and the
/// flattened map; any payload it refuses (an unknown field to keep, a wrong
/// type, a duplicate key) takes the general path, which also explains faults.
/// Only objects are tried: serde would also read a JSON array into it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Known {
    jid: JobId,
    job: String,
    #[serde(default = "first_version")]
    version: u32,
    #[serde(default)]
    queue: String,
    #[serde(default = "empty_args")]
    args: serde_json::Value,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    enqueued_at: u64,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    failed_at: Option<u64>,
    #[serde(default)]
    deferred: u32,
}

impl Known {
    /// The envelope, when the checks the types cannot express hold.
    fn envelope(self) -> Option<Envelope> {
        let Known { jid, job, version, queue, args, attempt, enqueued_at, error, failed_at, deferred } = self;
        let valid = !jid.as_str().is_empty() && !job.is_empty() && version >= 1;
        let extra = serde_json::Map::new();
        valid.then_some(Envelope {
            jid,
            job,
            version,
            queue,
            args,
            attempt,
            enqueued_at,
            error,
            failed_at,
            deferred,
            extra,
        })
    }
}

/// Decodes a payload a worker fetched, checking each field so that a bad
/// one is named in the error, with the job when the job name is readable.
pub(crate) fn decode(text: &str) -> Result<Envelope, Malformed> {
    let object = text.trim_start().starts_with('{');
    if let Some(envelope) = object.then(|| serde_json::from_str::<Known>(text).ok()).flatten().and_then(Known::envelope)
    {
        return Ok(envelope);
    }
    decode_general(text)
}

/// Decodes any payload through the JSON tree: keeps unknown fields, and names
/// the field at fault when the payload is not a valid envelope.
fn decode_general(text: &str) -> Result<Envelope, Malformed> {
    let unread = |reason: String| Malformed { jid: None, job: None, version: None, reason, unreadable: false };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| unread(format!("not JSON: {error}")))?;
    let serde_json::Value::Object(fields) = &value else {
        let found = crate::migrate::json_type(&value);
        return Err(unread(format!("expected a JSON object, found {found}")));
    };
    let text_of = |name: &str| fields.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
    let (jid, job) = (text_of("jid").filter(|s| !s.is_empty()), text_of("job").filter(|s| !s.is_empty()));
    let version = match fields.get("version") {
        None => Some(first_version()),
        Some(found) => found.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|&n| n >= 1),
    };
    let fail =
        |reason: String| Err(Malformed { jid: jid.clone(), job: job.clone(), version, reason, unreadable: false });
    for (name, kind) in FIELD_KINDS {
        let Some(found) = fields.get(*name) else {
            if matches!(kind, FieldKind::Name) {
                return fail(format!("field `{name}` is missing; it must be a non-empty string"));
            }
            continue;
        };
        if let Some(expected) = kind.mismatch(found) {
            return fail(format!("field `{name}` must be {expected}, found {}", describe(found)));
        }
    }
    serde_json::from_value(value).or_else(|error| fail(error.to_string()))
}

#[derive(Clone, Copy)]
enum FieldKind {
    Name,
    Version,
    Text,
    Count,
    Millis,
    OptionalText,
    OptionalMillis,
}

const FIELD_KINDS: &[(&str, FieldKind)] = &[
    ("jid", FieldKind::Name),
    ("job", FieldKind::Name),
    ("version", FieldKind::Version),
    ("queue", FieldKind::Text),
    ("attempt", FieldKind::Count),
    ("deferred", FieldKind::Count),
    ("enqueued_at", FieldKind::Millis),
    ("error", FieldKind::OptionalText),
    ("failed_at", FieldKind::OptionalMillis),
];

impl FieldKind {
    /// What the field should have been, when `value` does not fit.
    fn mismatch(self, value: &serde_json::Value) -> Option<&'static str> {
        let u32_in = |min: u64| value.as_u64().is_some_and(|n| n >= min && n <= u64::from(u32::MAX));
        let fits = match self {
            FieldKind::Name => value.as_str().is_some_and(|s| !s.is_empty()),
            FieldKind::Version => u32_in(1),
            FieldKind::Text => value.is_string(),
            FieldKind::Count => u32_in(0),
            FieldKind::Millis => value.is_u64(),
            FieldKind::OptionalText => value.is_null() || value.is_string(),
            FieldKind::OptionalMillis => value.is_null() || value.is_u64(),
        };
        (!fits).then_some(match self {
            FieldKind::Name => "a non-empty string",
            FieldKind::Version => "an integer from 1 to 4294967295",
            FieldKind::Text => "a string",
            FieldKind::Count => "an integer from 0 to 4294967295",
            FieldKind::Millis | FieldKind::OptionalMillis => {
                "milliseconds since the Unix epoch (a non-negative integer)"
            }
            FieldKind::OptionalText => "a string or null",
        })
    }
}

fn describe(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => format!("{n}"),
        serde_json::Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        other => crate::migrate::json_type(other).to_owned(),
    }
}

fn first_version() -> u32 {
    1
}

fn is_first_version(version: &u32) -> bool {
    *version == 1
}

fn empty_args() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The queue and job id a stored payload names, for moving it back to a
/// queue: the queue is `default` when it names none or cannot be read (the
/// worker then dead-letters it there with its reason), as the Redis scripts do.
pub(crate) fn queue_and_jid(payload: &str) -> (String, Option<String>) {
    let named = named(payload);
    let jid = named.as_ref().and_then(|named| named.jid.clone());
    let queue = named.map(|named| named.queue).filter(|queue| !queue.is_empty());
    (queue.unwrap_or_else(|| "default".to_owned()), jid)
}

/// The job id a stored payload names, if it can be read and names one (read
/// alone, skipping the rest: this runs for every job a worker holds ahead).
pub(crate) fn jid_of(payload: &str) -> Option<JobId> {
    #[derive(Deserialize)]
    struct Id {
        jid: Option<String>,
    }
    serde_json::from_str::<Id>(payload).ok()?.jid.filter(|jid| !jid.is_empty()).map(JobId::from)
}

/// The fields a payload is looked up by.
struct Named {
    queue: String,
    jid: Option<String>,
}

/// Reads them as the Redis scripts do (cjson): each on its own, a field that is
/// not a string left out, the last of a repeated key winning.
fn named(payload: &str) -> Option<Named> {
    let serde_json::Value::Object(fields) = serde_json::from_str(payload).ok()? else { return None };
    let text = |key: &str| fields.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
    Some(Named { queue: text("queue").unwrap_or_default(), jid: text("jid") })
}

/// Milliseconds since the Unix epoch, the unit of every time in the wire format.
pub fn now_millis() -> u64 {
    millis(SystemTime::now())
}

/// `time` as milliseconds since the Unix epoch (0 before it).
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `delay` after `now_ms` (milliseconds since the Unix epoch), stopping at the
/// end of `u64` instead of overflowing: a delay from a setting may be `Duration::MAX`.
pub(crate) fn millis_after(now_ms: u64, delay: std::time::Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_decodes_exactly_as_the_general_one() {
        let cases = [
            r#"{"jid":"a","job":"x"}"#,
            r#"{"jid":"a","job":"x","version":3,"queue":"q","args":{"n":[1,2.5,null]},"attempt":2,"enqueued_at":9,"error":"e","failed_at":10,"deferred":1}"#,
            r#"{"jid":"a","job":"x","error":null,"failed_at":null}"#,
            r#"{"jid":"a","job":"x","trace":"kept"}"#,
            r#"{"jid":"a","job":"x","attempt":1,"attempt":2}"#,
            r#"{"jid":"a","job":"x","args":[1]}"#,
            r#"{"jid":"","job":"x"}"#,
            r#"{"jid":"a","job":"x","version":0}"#,
            r#"{"jid":"a","job":"x","version":1.0}"#,
            r#"{"jid":"a","job":"x","enqueued_at":-1}"#,
            r#"{"jid":"a","job":"x","deferred":4294967296}"#,
            r#"{"jid":"a","job":"x","queue":null}"#,
            r#"{"jid":"a"}"#,
            r#"["a","x"]"#,
            r#"  ["a","x",2]"#,
            r#" {"jid":"a","job":"x"} "#,
        ];
        for text in cases {
            assert_eq!(decode(text), decode_general(text), "{text}");
        }
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"jid":"a1","job":"x","version":2,"queue":"q","args":{"n":1},"attempt":3,"enqueued_at":5,"trace":{"id":"t"}}"#;
        let env = Envelope::from_json(text).unwrap();
        assert_eq!(env.extra["trace"]["id"], "t");
        let again = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn bad_fields_are_named_with_the_job() {
        let cases = [
            (
                r#"{"jid":"a","job":"x","version":"2"}"#,
                "job `x`: malformed payload: field `version` must be an integer from 1 to 4294967295, found the string \"2\"",
            ),
            (
                r#"{"jid":"a","job":"x","version":0}"#,
                "job `x`: malformed payload: field `version` must be an integer from 1 to 4294967295, found 0",
            ),
            (
                r#"{"jid":"a","job":"x","attempt":4294967296}"#,
                "job `x`: malformed payload: field `attempt` must be an integer from 0 to 4294967295, found 4294967296",
            ),
            (r#"{"jid":"a","job":7}"#, "malformed payload: field `job` must be a non-empty string, found 7"),
            (r#"{"job":"x"}"#, "job `x`: malformed payload: field `jid` is missing; it must be a non-empty string"),
            (r#"[1,2]"#, "malformed payload: expected a JSON object, found an array"),
        ];
        for (text, expected) in cases {
            assert_eq!(decode(text).unwrap_err().message(), expected, "{text}");
        }
        assert!(
            decode("{nope").unwrap_err().message().starts_with("malformed payload: not JSON: key must be a string")
        );
        assert_eq!(decode(r#"{"jid":"a","job":"x","error":null}"#).unwrap().job, "x");
    }

    #[test]
    fn minimal_payload_from_another_language_gets_defaults() {
        let env = Envelope::from_json(r#"{"jid":"a","job":"x"}"#).unwrap();
        assert_eq!((env.version, env.attempt), (1, 0));
        assert!(env.args.as_object().is_some_and(|a| a.is_empty()));
    }
}
