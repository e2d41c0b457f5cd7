//! The schema (lock file) and the compatibility check: every kind of change,
//! breaking or not, as `check` reports it.

use jobs_core::schema::{self, ChangeKind, Schema, SchemaError};
use jobs_core::{Args, JobError, JobRegistration, Registry, job};
use serde_json::{Value, json};

/// A schema of one job, fields at their default left out as in a lock file.
fn one(job: Value) -> Schema {
    Schema::from_json(&json!({ "format": 1, "jobs": [job] }).to_string()).unwrap()
}

fn welcome(version: u32, params: Value) -> Schema {
    one(json!({ "name": "send_welcome_email", "version": version, "queue": "mail", "params": params }))
}

fn user_id() -> Value {
    json!({ "name": "user_id", "type": "u64" })
}

const JOB: &str = "send_welcome_email";

#[test]
fn the_same_signature_reports_nothing() {
    let lock = welcome(1, json!([user_id()]));
    let report = schema::check(&lock, &lock.clone());
    assert!(report.changes.is_empty(), "{report}");
    assert_eq!(report.render("jobs.lock.json"), "ok: the registered jobs match jobs.lock.json\n");
}

#[test]
fn a_parameter_added_without_a_default_is_breaking_and_the_fix_names_the_default() {
    let lock = welcome(1, json!([user_id()]));
    let code = welcome(1, json!([user_id(), { "name": "locale", "type": "String" }]));
    let report = schema::check(&lock, &code);
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::ParamAdded, ChangeKind::ArgsChangedInPlace]);
    let change = &report.changes[0];
    assert_eq!(
        change.message,
        "parameter `locale: String` was added without a default: version-1 payloads in Redis lack it and would fail with a missing argument"
    );
    assert!(change.fix.as_deref().unwrap().contains("#[job(default = …)] locale: String"), "{change:?}");
    assert!(change.fix.as_deref().unwrap().contains("`version = 2`"), "{change:?}");
}

/// A missing key reads as `None`: an `Option` needs no default to be added
/// (nor breaks when it loses one), and an old payload runs with `None`.
#[test]
fn an_option_parameter_added_or_losing_its_default_is_not_breaking() {
    let lock = welcome(1, json!([user_id()]));
    let code = welcome(2, json!([user_id(), { "name": "note", "type": "Option<String>" }]));
    let report = schema::check(&lock, &code);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(report.kinds(JOB), [ChangeKind::VersionRaised, ChangeKind::ParamAdded]);
    assert_eq!(
        report.changes[1].message,
        "parameter `note: Option<String>` added: older payloads lack it and read it as `None`"
    );
    let lock = welcome(2, json!([user_id(), { "name": "note", "type": "Option<String>", "default": true }]));
    let code = welcome(2, json!([user_id(), { "name": "note", "type": "Option<String>" }]));
    assert!(!schema::check(&lock, &code).is_breaking());
    let code = welcome(2, json!([user_id(), { "name": "note", "type": "String" }]));
    assert!(schema::check(&lock, &code).is_breaking(), "a type change still is");
}

#[test]
fn a_version_raised_with_nothing_to_fill_the_new_parameter_is_breaking() {
    let lock = welcome(1, json!([user_id()]));
    let code = welcome(2, json!([user_id(), { "name": "locale", "type": "String" }]));
    let report = schema::check(&lock, &code);
    assert!(report.is_breaking());
    let breaking: Vec<_> = report.breaking().collect();
    assert_eq!(breaking.len(), 1);
    assert!(breaking[0].message.starts_with("version went up to 2, but parameter `locale: String`"), "{report}");
    assert_eq!(report.kinds(JOB), [ChangeKind::ParamAdded, ChangeKind::VersionRaised]);
}

#[test]
fn a_version_raised_with_migrate_covers_a_new_required_parameter() {
    let lock = welcome(1, json!([{ "name": "name", "type": "String" }]));
    let code = one(json!({ "name": JOB, "version": 2, "queue": "mail", "migrate": true,
        "params": [{ "name": "first", "type": "String" }, { "name": "last", "type": "String" }] }));
    let report = schema::check(&lock, &code);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(
        report.kinds(JOB),
        [ChangeKind::VersionRaised, ChangeKind::ParamAdded, ChangeKind::ParamAdded, ChangeKind::ParamRemoved]
    );
    assert!(report.to_string().contains("`migrate` must insert it into payloads older than version 2"), "{report}");
    // An `Option` reads as `None` where it is missing: `migrate` may fill it, but need not.
    let code = one(json!({ "name": JOB, "version": 2, "queue": "mail", "migrate": true,
        "params": [{ "name": "name", "type": "String" }, { "name": "note", "type": "Option<String>" }] }));
    let report = schema::check(&lock, &code).to_string();
    assert!(
        report.contains("`note: Option<String>` added: older payloads lack it and read it as `None`, unless `migrate` inserts a value"),
        "{report}"
    );
    assert!(!report.contains("must insert"), "{report}");
}

#[test]
fn a_parameter_added_with_a_default_is_a_note() {
    let lock = welcome(1, json!([user_id()]));
    let code = welcome(2, json!([user_id(), { "name": "locale", "type": "String", "default": true, "since": 2 }]));
    let report = schema::check(&lock, &code);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(report.kinds(JOB), [ChangeKind::VersionRaised, ChangeKind::ParamAdded]);
    assert_eq!(
        report.changes[1].message,
        "parameter `locale: String` added with a default: older payloads get the default"
    );
    assert!(report.render("jobs.lock.json").ends_with(
        "ok: no breaking change against jobs.lock.json (2 notes); record the new signatures with `schema --write jobs.lock.json`\n"
    ));
}

#[test]
fn a_default_with_since_at_the_old_version_does_not_cover_queued_payloads() {
    let lock = welcome(2, json!([user_id()]));
    let code = welcome(2, json!([user_id(), { "name": "locale", "type": "String", "default": true, "since": 2 }]));
    let report = schema::check(&lock, &code);
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::ParamAdded, ChangeKind::ArgsChangedInPlace]);
    assert_eq!(report.changes[0].fix.as_deref(), Some("raise the job to `version = 3` and write `since = 3`"));
}

#[test]
fn a_changed_type_is_breaking_unless_it_widens_or_migrate_converts_it() {
    let lock = welcome(1, json!([user_id()]));
    let text = welcome(1, json!([{ "name": "user_id", "type": "String" }]));
    let report = schema::check(&lock, &text);
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::ParamTypeChanged, ChangeKind::ArgsChangedInPlace]);
    assert_eq!(
        report.changes[0].message,
        "type of `user_id` changed from `u64` to `String`: payloads in Redis carry the old type and would fail to decode"
    );

    let lock32 = welcome(1, json!([{ "name": "user_id", "type": "u32" }]));
    let widened = schema::check(&lock32, &welcome(2, json!([{ "name": "user_id", "type": "Option<u64>" }])));
    assert!(!widened.is_breaking(), "{widened}");
    assert_eq!(widened.kinds(JOB), [ChangeKind::VersionRaised, ChangeKind::ParamTypeChanged]);

    let narrowed = schema::check(&lock, &welcome(1, json!([{ "name": "user_id", "type": "u32" }])));
    assert!(narrowed.is_breaking(), "u64 values may not fit a u32");

    let migrated = one(json!({ "name": JOB, "version": 2, "queue": "mail", "migrate": true,
        "params": [{ "name": "user_id", "type": "String" }] }));
    assert!(!schema::check(&lock, &migrated).is_breaking());

    let same = welcome(1, json!([{ "name": "user_id", "type": "::core::primitive::u64" }]));
    assert!(schema::check(&lock, &same).changes.is_empty(), "a module path is not a type change");

    // With the version already raised, the fix does not ask to raise it again.
    let raised = schema::check(&lock, &welcome(2, json!([{ "name": "user_id", "type": "String" }])));
    let fix = raised.changes.iter().find(|c| c.kind == ChangeKind::ParamTypeChanged).unwrap().fix.clone().unwrap();
    assert!(fix.ends_with("convert the old value in a `migrate` function (`version` is already raised to 2)"), "{fix}");
    let fix = report.changes[0].fix.clone().unwrap();
    assert!(fix.ends_with("raise `version` to 2 and convert the old value in `migrate`"), "{fix}");
}

/// A defaulted parameter that replaces one of the same type reads as a rename
/// without an alias: the fix, or the note, says how to keep the old values.
#[test]
fn a_defaulted_parameter_that_looks_like_a_rename_names_the_alias() {
    let locale = |name: &str, since: Option<u32>| {
        let mut param = json!({ "name": name, "type": "String", "default": true });
        if let Some(since) = since {
            param["since"] = json!(since);
        }
        param
    };
    let lock = welcome(2, json!([user_id(), locale("locale", Some(2))]));
    let report = schema::check(&lock, &welcome(2, json!([user_id(), locale("lang", Some(2))])));
    let added = report.changes.iter().find(|c| c.kind == ChangeKind::ParamAdded).unwrap();
    assert!(added.breaking);
    assert_eq!(
        added.fix.as_deref(),
        Some(
            "if it is `locale` renamed, say so: `#[job(alias = \"locale\")]`; if it is new, raise the job to `version = 3` and write `since = 3`"
        )
    );
    // An old parameter another new one already takes by its alias is not the one renamed.
    let two = welcome(2, json!([user_id(), locale("locale", Some(2)), locale("region", Some(2))]));
    let mut country = locale("country", Some(2));
    country["aliases"] = json!(["locale"]);
    let report = schema::check(&two, &welcome(2, json!([user_id(), country, locale("lang", Some(2))])));
    let added = report.changes.iter().find(|c| c.kind == ChangeKind::ParamAdded).unwrap();
    assert!(added.fix.as_deref().is_some_and(|fix| fix.starts_with("if it is `region` renamed")), "{added:?}");

    let report = schema::check(&lock, &welcome(3, json!([user_id(), locale("lang", None)])));
    let added = report.changes.iter().find(|c| c.kind == ChangeKind::ParamAdded).unwrap();
    assert!(!added.breaking);
    assert_eq!(
        added.message,
        "parameter `lang: String` added with a default: older payloads get the default (if it is `locale` renamed, say so: `#[job(alias = \"locale\")]`, or their `locale` values are ignored)"
    );
}

#[test]
fn a_removed_parameter_is_information_not_a_break() {
    let lock = welcome(1, json!([user_id(), { "name": "subject", "type": "String" }]));
    let code = welcome(2, json!([user_id()]));
    let report = schema::check(&lock, &code);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(report.kinds(JOB), [ChangeKind::VersionRaised, ChangeKind::ParamRemoved]);
    assert_eq!(
        report.changes[1].message,
        "parameter `subject` was removed: payloads that still carry it run, and the value is ignored"
    );
}

#[test]
fn a_parameter_renamed_with_an_alias_is_a_note_and_without_one_it_breaks() {
    let lock = welcome(1, json!([{ "name": "uid", "type": "u64" }]));
    let aliased = welcome(2, json!([{ "name": "user_id", "type": "u64", "aliases": ["uid"] }]));
    let report = schema::check(&lock, &aliased);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(report.kinds(JOB), [ChangeKind::VersionRaised, ChangeKind::ParamRenamed]);

    let bare = welcome(2, json!([user_id()]));
    let report = schema::check(&lock, &bare);
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::ParamAdded, ChangeKind::VersionRaised, ChangeKind::ParamRemoved]);
    // The fix names the alias first: an old parameter of the same type is gone.
    let fix = report.changes[0].fix.as_deref().unwrap();
    assert!(fix.starts_with("if it is `uid` renamed, say so: `#[job(alias = \"uid\")] user_id: u64`"), "{fix}");

    // Dropping the alias later breaks the payloads that still say `uid`.
    let dropped = schema::check(&aliased, &welcome(2, json!([user_id()])));
    assert_eq!(dropped.kinds(JOB), [ChangeKind::ParamAliasRemoved]);
    assert!(dropped.changes[0].message.starts_with("parameter `user_id` no longer accepts `uid`"), "{dropped}");
}

/// A change to the arguments at the same version is read by the workers
/// still on the old code during a rolling deploy: a rename, a removal, a
/// new parameter or a new type there fails or drops values, whatever it
/// does for the payloads already queued. Raising the version makes them put
/// the new payloads back instead.
#[test]
fn an_argument_change_at_the_same_version_breaks_the_old_workers() {
    let lock = welcome(1, json!([{ "name": "uid", "type": "u32" }, { "name": "subject", "type": "String" }]));
    let code = welcome(
        1,
        json!([{ "name": "user_id", "type": "u64", "aliases": ["uid"] }, { "name": "note", "type": "Option<String>" }]),
    );
    let report = schema::check(&lock, &code);
    assert!(report.is_breaking(), "{report}");
    let change = report.breaking().next().unwrap();
    assert_eq!(change.kind, ChangeKind::ArgsChangedInPlace);
    assert!(
        change.message.contains("(`uid` renamed to `user_id`, `user_id` now `u64`, `note` added, `subject` removed)"),
        "{report}"
    );
    assert_eq!(
        change.fix.as_deref(),
        Some(
            "raise `version` to 2 (a new parameter gets `since = 2`): old workers then put the new payloads back until a worker with this code runs them"
        )
    );
    let raised = welcome(
        2,
        json!([{ "name": "user_id", "type": "u64", "aliases": ["uid"] }, { "name": "note", "type": "Option<String>" }]),
    );
    assert!(!schema::check(&lock, &raised).is_breaking(), "the same change at version 2");

    // An old worker fills a parameter with a default, or an `Option`, itself: removing one is safe.
    let lock = welcome(1, json!([user_id(), { "name": "subject", "type": "String", "default": true }]));
    assert!(!schema::check(&lock, &welcome(1, json!([user_id()]))).is_breaking());
    // With `migrate` and the version raised, an alias dropped is `migrate`'s to handle.
    let lock = welcome(2, json!([{ "name": "user_id", "type": "u64", "aliases": ["uid"] }]));
    let code = one(json!({ "name": JOB, "version": 3, "queue": "mail", "migrate": true, "params": [user_id()] }));
    assert!(!schema::check(&lock, &code).is_breaking(), "{}", schema::check(&lock, &code));
}

#[test]
fn a_removed_job_breaks_and_a_renamed_one_with_its_alias_does_not() {
    let lock = welcome(1, json!([user_id()]));
    let renamed = one(json!({ "name": "send_welcome_message", "aliases": [JOB], "version": 1, "queue": "mail",
        "params": [user_id()] }));
    let report = schema::check(&lock, &renamed);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(report.kinds("send_welcome_message"), [ChangeKind::JobRenamed]);

    let other = one(json!({ "name": "send_welcome_message", "version": 1, "queue": "mail", "params": [user_id()] }));
    let report = schema::check(&lock, &other);
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::JobRemoved]);
    assert_eq!(report.kinds("send_welcome_message"), [ChangeKind::JobAdded]);
    let removed = &report.changes[0];
    assert_eq!(
        removed.message,
        "job `send_welcome_email` is gone and no job lists it in `aliases`: its payloads still in Redis would fail as unknown (retried, then dead-lettered)"
    );
    assert!(removed.fix.as_deref().unwrap().contains("aliases = [\"send_welcome_email\"]"));
}

#[test]
fn a_dropped_alias_breaks() {
    let lock = one(json!({ "name": "send_welcome_message", "aliases": [JOB], "version": 1, "queue": "mail",
        "params": [user_id()] }));
    let code = one(json!({ "name": "send_welcome_message", "version": 1, "queue": "mail", "params": [user_id()] }));
    let report = schema::check(&lock, &code);
    assert!(report.is_breaking());
    assert_eq!(report.kinds("send_welcome_message"), [ChangeKind::AliasRemoved]);
}

#[test]
fn a_lowered_version_breaks_and_a_raised_one_alone_is_a_note() {
    let lock = welcome(3, json!([user_id()]));
    let report = schema::check(&lock, &welcome(2, json!([user_id()])));
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::VersionLowered]);
    assert_eq!(report.changes[0].fix.as_deref(), Some("versions only go up: set `version = 4`"));

    let report = schema::check(&lock, &welcome(4, json!([user_id()])));
    assert!(!report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::VersionRaised]);
    assert_eq!(report.changes[0].message, "version 3 -> 4");
}

#[test]
fn a_removed_default_breaks_until_old_payloads_are_gone() {
    let lock = welcome(2, json!([user_id(), { "name": "locale", "type": "String", "default": true, "since": 2 }]));
    let code = welcome(3, json!([user_id(), { "name": "locale", "type": "String" }]));
    let report = schema::check(&lock, &code);
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::DefaultRemoved, ChangeKind::VersionRaised]);
    assert_eq!(
        report.changes[0].message,
        "parameter `locale` lost its default: payloads older than version 2 lack it and would fail with a missing argument"
    );
    assert_eq!(
        report.changes[0].fix.as_deref(),
        Some("keep the default until `versions` shows no `send_welcome_email` payload older than version 2")
    );
}

/// With `migrate`, a removed default is `migrate`'s to fill: a note that says so, not silence.
#[test]
fn a_removed_default_with_migrate_is_a_note_that_migrate_must_fill_it() {
    let job = |version: u32, migrate: bool, locale: Value| {
        one(
            json!({ "name": JOB, "version": version, "queue": "mail", "migrate": migrate, "params": [user_id(), locale] }),
        )
    };
    let lock = job(2, true, json!({ "name": "locale", "type": "String", "default": true, "since": 2 }));
    let code = job(3, true, json!({ "name": "locale", "type": "String" }));
    let report = schema::check(&lock, &code);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(report.kinds(JOB), [ChangeKind::VersionRaised, ChangeKind::DefaultRemoved]);
    assert_eq!(
        report.changes[1].message,
        "parameter `locale` lost its default: `migrate` must insert it in payloads older than version 2, which lack it"
    );
}

/// The default fills a missing value only in payloads older than `since`: a
/// `since` lowered, or written where there was none, leaves queued payloads
/// written before the parameter existed with nothing to fill them.
#[test]
fn a_lowered_or_added_since_breaks_and_a_raised_one_does_not() {
    let locale = |since: Option<u32>| match since {
        Some(since) => json!({ "name": "locale", "type": "String", "default": true, "since": since }),
        None => json!({ "name": "locale", "type": "String", "default": true }),
    };
    let lowered = schema::check(
        &welcome(3, json!([user_id(), locale(Some(3))])),
        &welcome(4, json!([user_id(), locale(Some(2))])),
    );
    assert!(lowered.is_breaking(), "{lowered}");
    assert_eq!(lowered.kinds(JOB), [ChangeKind::SinceLowered, ChangeKind::VersionRaised]);
    assert_eq!(
        lowered.changes[0].message,
        "parameter `locale` now has `since = 2` (it had 3): queued payloads of version 2 or later written before it existed lack it, and its default no longer fills them (a missing argument)"
    );
    assert_eq!(lowered.changes[0].fix.as_deref(), Some("keep `since = 3`, the version that added it"));

    let added =
        schema::check(&welcome(2, json!([user_id(), locale(None)])), &welcome(2, json!([user_id(), locale(Some(2))])));
    assert!(added.is_breaking(), "{added}");
    assert_eq!(added.kinds(JOB), [ChangeKind::SinceLowered]);
    assert_eq!(added.changes[0].fix.as_deref(), Some("leave `since` out, as in the lock file"));

    let raised = schema::check(
        &welcome(3, json!([user_id(), locale(Some(2))])),
        &welcome(3, json!([user_id(), locale(Some(3))])),
    );
    assert!(!raised.is_breaking(), "{raised}");
    // Written above every queued payload's version, `since` leaves them all to the default.
    let above =
        schema::check(&welcome(2, json!([user_id(), locale(None)])), &welcome(3, json!([user_id(), locale(Some(3))])));
    assert!(!above.is_breaking(), "{above}");
}

#[test]
fn a_removed_migrate_breaks() {
    let lock = one(json!({ "name": JOB, "version": 2, "queue": "mail", "migrate": true, "params": [user_id()] }));
    let report = schema::check(&lock, &welcome(2, json!([user_id()])));
    assert!(report.is_breaking());
    assert_eq!(report.kinds(JOB), [ChangeKind::MigrateRemoved]);
}

#[test]
fn a_queue_change_and_a_new_job_are_notes() {
    let lock = welcome(1, json!([user_id()]));
    let mut code = one(json!({ "name": JOB, "version": 1, "queue": "critical", "params": [user_id()] }));
    code.jobs.push(one(json!({ "name": "tally", "version": 1, "queue": "default", "params": [] })).jobs.remove(0));
    let report = schema::check(&lock, &code);
    assert!(!report.is_breaking(), "{report}");
    assert_eq!(report.kinds(JOB), [ChangeKind::QueueChanged]);
    assert_eq!(report.kinds("tally"), [ChangeKind::JobAdded]);
}

#[test]
fn breaking_changes_come_first_and_the_summary_counts_them() {
    let lock = welcome(1, json!([user_id(), { "name": "subject", "type": "String" }]));
    let code = welcome(1, json!([{ "name": "user_id", "type": "String" }]));
    let text = schema::check(&lock, &code).render("jobs.lock.json");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("breaking: send_welcome_email: type of `user_id` changed"), "{text}");
    assert!(lines[1].starts_with("  fix: "), "{text}");
    assert!(
        lines[2].starts_with("breaking: send_welcome_email: the arguments changed at the same version 1"),
        "{text}"
    );
    assert!(lines[4].starts_with("note: send_welcome_email: parameter `subject` was removed"), "{text}");
    assert!(lines[5].starts_with("error: 2 breaking changes against jobs.lock.json (1 note);"), "{text}");
}

// The schema of real #[job]s.

/// Sends the welcome mail.
#[job(name = "welcome", aliases = ["greet"], version = 3, queue = "mail", migrate = upgrade)]
async fn welcome_job(
    #[job(alias = "uid")] user_id: u64,
    #[job(since = 2, default = "en".to_string())] locale: String,
    #[job(default)] tags: Vec<String>,
) {
    let _ = (user_id, locale, tags);
}

fn upgrade(_from: u32, _args: &mut Args) -> Result<(), JobError> {
    Ok(())
}

#[test]
fn the_schema_of_a_registered_job_is_sorted_json_with_defaults_left_out() {
    let registry = Registry::from_jobs(vec![&WELCOME_REGISTRATION]).unwrap();
    let schema = Schema::of(&registry);
    let expected = r#"{
  "format": 1,
  "jobs": [
    {
      "name": "welcome",
      "aliases": [
        "greet"
      ],
      "version": 3,
      "queue": "mail",
      "migrate": true,
      "params": [
        {
          "name": "locale",
          "type": "String",
          "default": true,
          "since": 2
        },
        {
          "name": "tags",
          "type": "Vec<String>",
          "default": true
        },
        {
          "name": "user_id",
          "type": "u64",
          "aliases": [
            "uid"
          ]
        }
      ]
    }
  ]
}
"#;
    assert_eq!(schema.to_json(), expected);
    assert_eq!(Schema::from_json(expected).unwrap(), schema);
}

/// A name listed twice, under any of its guises, would let `check` compare the
/// code with one entry and ignore the other.
#[test]
fn a_name_written_twice_is_refused() {
    let job = |name: &str, aliases: Value, params: Value| json!({ "name": name, "aliases": aliases, "version": 1, "queue": "mail", "params": params });
    let refused = |jobs: Value| Schema::from_json(&json!({ "format": 1, "jobs": jobs }).to_string()).unwrap_err();

    let error = refused(json!([job(JOB, json!([]), json!([])), job("welcome", json!([JOB]), json!([]))]));
    assert!(matches!(&error, SchemaError::Duplicate { name } if name == JOB), "{error}");

    let twice = json!([user_id(), { "name": "user_id", "type": "String" }]);
    let error = refused(json!([job(JOB, json!([]), twice)]));
    assert_eq!(
        error.to_string(),
        "the lock file lists parameter `user_id` of job `send_welcome_email` twice, as a parameter or an alias (a merge that kept both sides?): keep the entry of what is deployed, or write the file anew with `schema --write`"
    );
    let shadowed = json!([user_id(), { "name": "account_id", "type": "u64", "aliases": ["user_id"] }]);
    let error = refused(json!([job(JOB, json!([]), shadowed)]));
    assert!(matches!(&error, SchemaError::DuplicateParam { job, name } if job == JOB && name == "user_id"), "{error}");

    // The same parameter name in two jobs is no repeat.
    let two_jobs = json!([job(JOB, json!([]), json!([user_id()])), job("welcome", json!([]), json!([user_id()]))]);
    Schema::from_json(&json!({ "format": 1, "jobs": two_jobs }).to_string()).unwrap();
}

static WELCOME_REGISTRATION: JobRegistration = JobRegistration::of::<WelcomeJob>("schema::welcome_job");

#[test]
fn unreadable_lock_files_say_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("jobs-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let missing = dir.join("missing.lock.json");
    let error = Schema::read(&missing).unwrap_err();
    assert!(matches!(error, SchemaError::Read { .. }));
    assert!(error.to_string().contains("schema --write"), "{error}");

    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{\"jobs\": 3}").unwrap();
    let error = Schema::read(&garbage).unwrap_err();
    assert!(error.to_string().contains("is not a jobs lock file"), "{error}");

    let future = dir.join("future.json");
    std::fs::write(&future, r#"{"format": 9, "jobs": []}"#).unwrap();
    let error = Schema::read(&future).unwrap_err();
    assert!(error.to_string().contains("format 9, newer than this version of jobs reads (1)"), "{error}");

    let twice = dir.join("twice.json");
    let entry = json!({ "name": JOB, "version": 1, "queue": "mail", "params": [] });
    std::fs::write(&twice, json!({ "format": 1, "jobs": [entry, entry] }).to_string()).unwrap();
    let error = Schema::read(&twice).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the lock file lists job `send_welcome_email` twice, as a job or an alias (a merge that kept both sides?): keep the entry of what is deployed, or write the file anew with `schema --write`"
    );

    let written = dir.join("jobs.lock.json");
    let schema = welcome(2, json!([user_id()]));
    schema.write(&written).unwrap();
    assert_eq!(Schema::read(&written).unwrap(), schema);
    std::fs::remove_dir_all(&dir).unwrap();
}
