//! The migration engine: brings a payload written at an older version up to
//! the current signature (aliases, then defaults, then `migrate`).

use serde_json::Value;

use crate::error::ArgError;
use crate::job::Args;
use crate::registry::JobRegistration;

/// What to do with a payload, given the version it was written at.
#[derive(Debug)]
pub enum Upgrade {
    /// Arguments brought up to date, ready to decode.
    Ready(Args),
    /// The payload is newer than this worker's code: put it back for a newer worker.
    TooNew,
}

/// Upgrades `args`, written at `version`, to the registration's signature.
///
/// A parameter absent from the payload takes its default when it has one,
/// unless `since` was written out and the payload is at that version or
/// newer: then the producer should have sent it, and that is an error.
pub fn upgrade(job: &JobRegistration, version: u32, args: Value) -> Result<Upgrade, ArgError> {
    if version > job.version {
        return Ok(Upgrade::TooNew);
    }
    let mut args = match args {
        Value::Object(map) => map,
        other => {
            return Err(ArgError::NotAnObject { job: job.name.to_owned(), found: json_type(&other).to_owned() });
        }
    };
    // Every parameter is looked at before an error is returned, so it names them all.
    let mut errors = Vec::new();
    for param in job.params {
        if args.contains_key(param.name) {
            continue;
        }
        if let Some(value) = param.aliases.iter().find_map(|alias| args.remove(*alias)) {
            args.insert(param.name.to_owned(), value);
            continue;
        }
        let Some(default) = param.default else { continue };
        if param.explicit_since && version >= param.since {
            errors.push(ArgError::Missing {
                job: job.name.to_owned(),
                field: param.name.to_owned(),
                hint: format!(
                    ": the payload is at version {version} and the parameter exists since version {}, so its default applies only to older payloads",
                    param.since
                ),
            });
            continue;
        }
        match default() {
            Ok(value) => _ = args.insert(param.name.to_owned(), value),
            Err(detail) => errors.push(ArgError::Invalid {
                job: job.name.to_owned(),
                field: param.name.to_owned(),
                detail: format!("default cannot be encoded: {detail}"),
            }),
        }
    }
    if let Some(error) = ArgError::all(job.name, errors) {
        return Err(error);
    }
    if let Some(migrate) = job.migrate.filter(|_| version < job.version) {
        migrate(version, &mut args).map_err(|error| ArgError::Migration {
            job: job.name.to_owned(),
            from: version,
            detail: error.to_string(),
        })?;
    }
    Ok(Upgrade::Ready(args))
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        // JSON reads an integer beyond 64 bits as a float: say what was sent.
        Value::Number(n) if n.as_f64().is_some_and(|f| n.is_f64() && f.fract() == 0.0 && f.abs() >= 9.2e18) => {
            "an integer beyond the 64-bit range"
        }
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer that sends 2^64 sent an integer, not a float, though JSON
    /// reads it as one: the error says what was sent.
    #[test]
    fn an_integer_beyond_64_bits_is_named_as_such() {
        let read = |text: &str| json_type(&serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(read("18446744073709551616"), "an integer beyond the 64-bit range");
        assert_eq!(read("-9300000000000000000"), "an integer beyond the 64-bit range");
        assert_eq!(read("18446744073709551615"), "a number", "u64::MAX fits");
        assert_eq!(read("1.5"), "a number");
    }
}
