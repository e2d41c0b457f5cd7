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
    /// The signature version the payload was written at.
    #[serde(default = "first_version")]
    pub version: u32,
    /// The queue it was enqueued on.
    #[serde(default)]
    pub queue: String,
    /// Arguments keyed by parameter name.
    #[serde(default = "empty_args")]
    pub args: serde_json::Value,
    /// Attempts made so far (0 until the first run ends).
    #[serde(default)]
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

fn first_version() -> u32 {
    1
}

fn empty_args() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Milliseconds since the Unix epoch, the unit of every time in the wire format.
pub fn now_millis() -> u64 {
    millis(SystemTime::now())
}

/// `time` as milliseconds since the Unix epoch (0 before it).
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"jid":"a1","job":"x","version":2,"queue":"q","args":{"n":1},"attempt":3,"enqueued_at":5,"trace":{"id":"t"}}"#;
        let env = Envelope::from_json(text).unwrap();
        assert_eq!(env.extra["trace"]["id"], "t");
        let again = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(again, env);
    }

    #[test]
    fn minimal_payload_from_another_language_gets_defaults() {
        let env = Envelope::from_json(r#"{"jid":"a","job":"x"}"#).unwrap();
        assert_eq!((env.version, env.attempt), (1, 0));
        assert!(env.args.as_object().is_some_and(|a| a.is_empty()));
    }
}
