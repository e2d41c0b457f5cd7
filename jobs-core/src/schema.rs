//! The signature of every registered job as stable JSON (the lock file), and
//! the compatibility check between a lock file and the code.
//!
//! Payloads outlive the code that wrote them: while a deploy rolls out, and
//! for as long as old jobs wait in Redis, a worker must still run what the
//! previous version of a job enqueued. Commit the schema as `jobs.lock.json`
//! and let the check name every change that would break those payloads:
//!
//! ```
//! use jobs_core::schema::{self, Schema};
//!
//! let lock = Schema::from_json(r#"{"format": 1, "jobs": [{"name": "send_welcome_email", "version": 1,
//!     "queue": "default", "params": [{"name": "user_id", "type": "u64"}]}]}"#)?;
//! let code = Schema::from_json(r#"{"format": 1, "jobs": [{"name": "send_welcome_email", "version": 2,
//!     "queue": "default", "params": [{"name": "user_id", "type": "u64"},
//!                                    {"name": "locale", "type": "String"}]}]}"#)?;
//! let report = schema::check(&lock, &code);
//! assert!(report.is_breaking()); // `locale` has no default: queued payloads lack it
//! assert!(report.to_string().contains("parameter `locale: String` was added without a default"));
//! # Ok::<(), jobs_core::schema::SchemaError>(())
//! ```
//!
//! In a test of the crate that holds the jobs, [`assert_compatible`] gates
//! every change on the committed lock file; the worker binary's `schema` and
//! `check` subcommands do the same from the shell (`docs/EVOLVING_JOBS.md`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::WorkerError;
use crate::registry::{JobRegistration, Registry};

/// The lock file format this version writes and reads.
pub const FORMAT: u32 = 1;

/// The signatures of a set of jobs, sorted by name: what `schema` prints and
/// `jobs.lock.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The lock file format ([`FORMAT`]).
    pub format: u32,
    /// One entry per job, sorted by name.
    pub jobs: Vec<JobSchema>,
}

/// One job's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSchema {
    /// The registered name.
    pub name: String,
    /// Older names still accepted, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The signature's version.
    pub version: u32,
    /// The queue its helpers enqueue on.
    pub queue: String,
    /// Whether a `migrate` function upgrades older payloads.
    #[serde(default, skip_serializing_if = "is_false")]
    pub migrate: bool,
    /// The parameters, sorted by name (their order in the function does not
    /// matter: arguments travel by name).
    pub params: Vec<ParamSchema>,
}

/// One parameter's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSchema {
    /// The parameter's name, its key in `args`.
    pub name: String,
    /// The Rust type as written in the function.
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether a default fills it for payloads that lack it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    /// The version that added it, when written out with `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u32>,
    /// Old names still accepted from payloads, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Why a lock file could not be read, or the registry not built.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error(
        "cannot read the lock file {}: {source} (write it with your worker binary: `schema --write {}`)",
        path.display(),
        path.display()
    )]
    Read {
        /// The lock file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a schema.
    #[error("{} is not a jobs lock file: {source}", path.display())]
    Parse {
        /// The lock file.
        path: PathBuf,
        /// Where and why parsing failed.
        source: serde_json::Error,
    },
    /// JSON text that is not a schema (from [`Schema::from_json`]).
    #[error("not a jobs schema: {0}")]
    Json(#[from] serde_json::Error),
    /// The file lists a job name twice, as a job or an alias (a merge that
    /// kept both sides).
    #[error(
        "the lock file lists job `{name}` twice, as a job or an alias (a merge that kept both sides?): keep the entry of what is deployed, or write the file anew with `schema --write`"
    )]
    Duplicate {
        /// The job's name.
        name: String,
    },
    /// A job of the file lists a parameter name twice, as a parameter or an
    /// alias.
    #[error(
        "the lock file lists parameter `{name}` of job `{job}` twice, as a parameter or an alias (a merge that kept both sides?): keep the entry of what is deployed, or write the file anew with `schema --write`"
    )]
    DuplicateParam {
        /// The job's name.
        job: String,
        /// The parameter's name.
        name: String,
    },
    /// The file was written by a newer version of jobs.
    #[error("the lock file has format {found}, newer than this version of jobs reads ({FORMAT}): upgrade jobs")]
    Format {
        /// The format found.
        found: u32,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The lock file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The linked jobs do not form a registry (two claim one name).
    #[error(transparent)]
    Registry(#[from] WorkerError),
}

impl Schema {
    /// The schema of the jobs in `registry`.
    pub fn of(registry: &Registry) -> Self {
        let mut jobs: Vec<JobSchema> = registry.jobs().iter().map(|job| JobSchema::of(job)).collect();
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        Self { format: FORMAT, jobs }
    }

    /// The schema of every job linked into this binary.
    pub fn linked() -> Result<Self, SchemaError> {
        Ok(Self::of(&Registry::linked()?))
    }

    /// The schema as pretty JSON with a final newline: the lock file's text.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses a schema from JSON. Fields at their default may be left out.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        let schema: Schema = serde_json::from_str(text)?;
        if schema.format > FORMAT {
            return Err(SchemaError::Format { found: schema.format });
        }
        // With a name listed twice, `check` would compare the code with whichever entry it met first.
        let mut names = BTreeSet::new();
        let job_names = schema.jobs.iter().flat_map(|job| std::iter::once(&job.name).chain(&job.aliases));
        if let Some(name) = first_repeat(&mut names, job_names) {
            return Err(SchemaError::Duplicate { name: name.clone() });
        }
        for job in &schema.jobs {
            let mut names = BTreeSet::new();
            let param_names = job.params.iter().flat_map(|param| std::iter::once(&param.name).chain(&param.aliases));
            if let Some(name) = first_repeat(&mut names, param_names) {
                return Err(SchemaError::DuplicateParam { job: job.name.clone(), name: name.clone() });
            }
        }
        Ok(schema)
    }

    /// Reads a lock file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, SchemaError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| SchemaError::Read { path: path.to_owned(), source })?;
        Self::from_json(&text).map_err(|error| match error {
            SchemaError::Json(source) => SchemaError::Parse { path: path.to_owned(), source },
            other => other,
        })
    }

    /// Writes the lock file.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), SchemaError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()).map_err(|source| SchemaError::Write { path: path.to_owned(), source })
    }

    /// The job of this name, or the one that lists it as an alias.
    fn find(&self, name: &str) -> Option<&JobSchema> {
        self.jobs
            .iter()
            .find(|job| job.name == name)
            .or_else(|| self.jobs.iter().find(|job| job.aliases.iter().any(|alias| alias == name)))
    }
}

impl JobSchema {
    fn of(job: &JobRegistration) -> Self {
        let mut params: Vec<ParamSchema> = job
            .params
            .iter()
            .map(|param| ParamSchema {
                name: param.name.to_owned(),
                ty: param.ty.to_owned(),
                default: param.default.is_some(),
                since: param.explicit_since.then_some(param.since),
                aliases: sorted(param.aliases),
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            name: job.name.to_owned(),
            aliases: sorted(job.aliases),
            version: job.version,
            queue: job.queue.to_owned(),
            migrate: job.migrate.is_some(),
            params,
        }
    }

    fn param(&self, name: &str) -> Option<&ParamSchema> {
        self.params.iter().find(|param| param.name == name)
    }
}

/// The first name that `seen` already holds, adding the others to it.
fn first_repeat<'a>(seen: &mut BTreeSet<&'a str>, names: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    names.into_iter().find(|name| !seen.insert(name.as_str()))
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    names.sort();
    names
}

/// What kind of change [`check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A job is in the code but not in the lock file.
    JobAdded,
    /// A job of the lock file is gone and no job lists its name as an alias. Breaking.
    JobRemoved,
    /// A job now goes by another name and lists the old one as an alias.
    JobRenamed,
    /// An alias of the lock file is gone. Breaking.
    AliasRemoved,
    /// The version went down. Breaking.
    VersionLowered,
    /// The version went up.
    VersionRaised,
    /// The job enqueues on another queue.
    QueueChanged,
    /// The `migrate` function is gone while older payloads may need it. Breaking.
    MigrateRemoved,
    /// A parameter was added; breaking when nothing fills it for queued payloads.
    ParamAdded,
    /// A parameter of the lock file is gone (payloads that carry it still run).
    ParamRemoved,
    /// A parameter now goes by another name and lists the old one as an alias.
    ParamRenamed,
    /// A parameter's type changed; breaking unless the new type reads every old value.
    ParamTypeChanged,
    /// A parameter lost its default. Breaking.
    DefaultRemoved,
    /// A parameter no longer accepts one of its old names. Breaking.
    ParamAliasRemoved,
    /// A defaulted parameter's `since` went down, or was written out where
    /// there was none, to a version at or below the lock file's: queued
    /// payloads of the versions in between that lack it would now fail with
    /// a missing argument. Breaking.
    SinceLowered,
    /// The arguments changed shape at the same version: workers still on the
    /// old code, during a rolling deploy, would read the new payloads as
    /// their own and fail or drop values. Breaking.
    ArgsChangedInPlace,
}

/// One change between the lock file and the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What changed.
    pub kind: ChangeKind,
    /// Whether payloads already in Redis could fail because of it.
    pub breaking: bool,
    /// The job, by its name in the code (or in the lock file when it is gone).
    pub job: String,
    /// What changed and why it matters, in plain words.
    pub message: String,
    /// What to do about it, for breaking changes.
    pub fix: Option<String>,
}

/// The outcome of [`check`]: every change, breaking ones first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The changes, breaking ones first, then by job.
    pub changes: Vec<Change>,
}

impl Report {
    /// Whether any change can break payloads already queued.
    pub fn is_breaking(&self) -> bool {
        self.changes.iter().any(|change| change.breaking)
    }

    /// The breaking changes.
    pub fn breaking(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|change| change.breaking)
    }

    /// The kinds of change of one job, in report order (handy in tests).
    pub fn kinds(&self, job: &str) -> Vec<ChangeKind> {
        self.changes.iter().filter(|change| change.job == job).map(|change| change.kind).collect()
    }

    /// The report as `check` prints it, naming the lock file.
    pub fn render(&self, lock: &str) -> String {
        let breaking = self.breaking().count();
        let notes = self.changes.len() - breaking;
        let mut out = String::new();
        if self.changes.is_empty() {
            out.push_str(&format!("ok: the registered jobs match {lock}\n"));
            return out;
        }
        for change in &self.changes {
            let label = if change.breaking { "breaking" } else { "note" };
            out.push_str(&format!("{label}: {}: {}\n", change.job, change.message));
            if let Some(fix) = &change.fix {
                out.push_str(&format!("  fix: {fix}\n"));
            }
        }
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        if breaking == 0 {
            out.push_str(&format!(
                "ok: no breaking change against {lock} ({}); record the new signatures with `schema --write {lock}`\n",
                plural(notes, "note")
            ));
        } else {
            out.push_str(&format!(
                "error: {} against {lock} ({}); fix the code, or accept a change once `versions` shows no payload it breaks waits, with `schema --write {lock}`\n",
                plural(breaking, "breaking change"),
                plural(notes, "note")
            ));
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("the lock file"))
    }
}

/// Compares the lock file's schema with the code's and names every change.
///
/// A change is breaking when a payload written under the lock file's
/// signature, still waiting in Redis, could fail or be dead-lettered under the
/// code's: a job or alias removed, a version lowered, a parameter added with
/// nothing to fill it, a type changed, a default or `migrate` removed. A
/// parameter removed is only a note: payloads that carry it still run.
pub fn check(lock: &Schema, code: &Schema) -> Report {
    let mut changes = Vec::new();
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    for old in &lock.jobs {
        match code.find(&old.name) {
            Some(new) => {
                matched.insert(&new.name);
                compare_job(old, new, &mut changes);
            }
            None => changes.push(Change {
                kind: ChangeKind::JobRemoved,
                breaking: true,
                job: old.name.clone(),
                message: format!(
                    "job `{}` is gone and no job lists it in `aliases`: its payloads still in Redis would fail as unknown (retried, then dead-lettered)",
                    old.name
                ),
                fix: Some(format!(
                    "keep the job until `versions` shows no `{0}` payload; if it was renamed, add `aliases = [\"{0}\"]` to the new job",
                    old.name
                )),
            }),
        }
    }
    for new in &code.jobs {
        if !matched.contains(new.name.as_str()) {
            changes.push(Change {
                kind: ChangeKind::JobAdded,
                breaking: false,
                job: new.name.clone(),
                message: format!("new job (version {}, queue `{}`)", new.version, new.queue),
                fix: None,
            });
        }
    }
    // Breaking first; otherwise keep the order found (by job, then by kind of check).
    changes.sort_by_key(|change| !change.breaking);
    Report { changes }
}

fn compare_job(old: &JobSchema, new: &JobSchema, changes: &mut Vec<Change>) {
    let job = new.name.clone();
    let mut push = |kind, breaking, message: String, fix: Option<String>| {
        changes.push(Change { kind, breaking, job: job.clone(), message, fix });
    };
    if old.name != new.name {
        push(
            ChangeKind::JobRenamed,
            false,
            format!("renamed from `{}`; the alias keeps its queued payloads running", old.name),
            None,
        );
    }
    let names: BTreeSet<&str> =
        std::iter::once(new.name.as_str()).chain(new.aliases.iter().map(String::as_str)).collect();
    for alias in &old.aliases {
        if !names.contains(alias.as_str()) {
            push(
                ChangeKind::AliasRemoved,
                true,
                format!(
                    "alias `{alias}` is gone: payloads still enqueued as `{alias}` would fail as unknown (retried, then dead-lettered)"
                ),
                Some(format!("keep `aliases = [\"{alias}\"]` until `versions` shows no `{alias}` payload")),
            );
        }
    }
    let (from, to) = (old.version, new.version);
    let upgraded = to > from;
    // Payloads the lock file's code wrote are at version `from` or older; the
    // new code's `migrate` runs on every one of them only when the version went up.
    let migrates = upgraded && new.migrate;
    if to < from {
        push(
            ChangeKind::VersionLowered,
            true,
            format!(
                "version went down from {from} to {to}: payloads written at version {from} are newer than this code, so it never runs them"
            ),
            Some(format!("versions only go up: set `version = {}`", from.saturating_add(1))),
        );
    } else if upgraded {
        push(ChangeKind::VersionRaised, false, format!("version {from} -> {to}"), None);
    }
    if old.queue != new.queue {
        push(
            ChangeKind::QueueChanged,
            false,
            format!(
                "queue `{}` -> `{}`: payloads already on `{}` run only on workers that still serve it",
                old.queue, new.queue, old.queue
            ),
            None,
        );
    }
    if old.migrate && !new.migrate {
        push(
            ChangeKind::MigrateRemoved,
            true,
            format!("`migrate` is gone: payloads older than version {from} still in Redis may need it"),
            Some(format!("keep `migrate` until `versions` shows no `{}` payload older than version {from}", new.name)),
        );
    }

    let mut old_matched: BTreeSet<&str> = BTreeSet::new();
    // What changed in the arguments' shape, for the rolling-deploy check below.
    let mut reshaped: Vec<String> = Vec::new();
    for param in &new.params {
        let found = old
            .param(&param.name)
            .map(|p| (p, false))
            .or_else(|| param.aliases.iter().find_map(|alias| old.param(alias)).map(|p| (p, true)));
        let Some((before, renamed)) = found else {
            reshaped.push(format!("`{}` added", param.name));
            // An old parameter of the same type that the new code lacks: most likely a rename.
            // One that another new parameter already takes (by name or alias) is no candidate.
            let taken = |name: &str| new.params.iter().any(|p| p.name == name || p.aliases.iter().any(|a| a == name));
            let renamed_from =
                old.params.iter().find(|p| !taken(&p.name) && same_type(&p.ty, &param.ty)).map(|p| p.name.as_str());
            added_param(new, param, from, migrates, renamed_from, &mut push);
            continue;
        };
        old_matched.insert(&before.name);
        let name = &param.name;
        // With the version raised and `migrate`, the old key reaches `migrate`, which may rename it.
        for alias in before.aliases.iter().filter(|_| !migrates) {
            if alias != name && !param.aliases.contains(alias) {
                push(
                    ChangeKind::ParamAliasRemoved,
                    true,
                    format!(
                        "parameter `{name}` no longer accepts `{alias}`: payloads that still say `{alias}` would lose the value (a missing argument, or the default)"
                    ),
                    Some(format!(
                        "keep `alias = \"{alias}\"` until `versions` shows no `{}` payload of the versions that wrote `{alias}`",
                        new.name
                    )),
                );
            }
        }
        if renamed {
            reshaped.push(format!("`{}` renamed to `{name}`", before.name));
        }
        if !same_type(&before.ty, &param.ty) {
            reshaped.push(format!("`{name}` now `{}`", param.ty));
        }
        if renamed {
            push(
                ChangeKind::ParamRenamed,
                false,
                format!(
                    "parameter `{}` renamed to `{name}`; the alias accepts payloads that still say `{}`",
                    before.name, before.name
                ),
                None,
            );
        }
        if !same_type(&before.ty, &param.ty) {
            if reads_every_value_of(&param.ty, &before.ty) {
                push(
                    ChangeKind::ParamTypeChanged,
                    false,
                    format!(
                        "type of `{name}` widened from `{}` to `{}`: every old value still decodes",
                        before.ty, param.ty
                    ),
                    None,
                );
            } else if migrates {
                push(
                    ChangeKind::ParamTypeChanged,
                    false,
                    format!(
                        "type of `{name}` changed from `{}` to `{}`; `migrate` must convert it in payloads older than version {to}",
                        before.ty, param.ty
                    ),
                    None,
                );
            } else {
                push(
                    ChangeKind::ParamTypeChanged,
                    true,
                    format!(
                        "type of `{name}` changed from `{}` to `{}`: payloads in Redis carry the old type and would fail to decode",
                        before.ty, param.ty
                    ),
                    Some(if upgraded {
                        format!(
                            "keep the type; or add a parameter under a new name with a default; or convert the old value in a `migrate` function (`version` is already raised to {to})"
                        )
                    } else {
                        format!(
                            "keep the type; or add a parameter under a new name with a default; or raise `version` to {} and convert the old value in `migrate`",
                            from.saturating_add(1)
                        )
                    }),
                );
            }
        }
        if before.default && !param.default && !optional(&param.ty) {
            let older = before.since.unwrap_or(from);
            if migrates {
                push(
                    ChangeKind::DefaultRemoved,
                    false,
                    format!(
                        "parameter `{name}` lost its default: `migrate` must insert it in payloads older than version {older}, which lack it"
                    ),
                    None,
                );
            } else {
                push(
                    ChangeKind::DefaultRemoved,
                    true,
                    format!(
                        "parameter `{name}` lost its default: payloads older than version {older} lack it and would fail with a missing argument"
                    ),
                    Some(format!(
                        "keep the default until `versions` shows no `{}` payload older than version {older}",
                        new.name
                    )),
                );
            }
        }
        // The default fills a missing value only below `since` (at every version without one);
        // queued payloads are at version `from` or older.
        let lowered = match (before.since, param.since) {
            (None, Some(now)) if now <= from => Some((now, "none".to_owned())),
            (Some(was), Some(now)) if now < was && now <= from => Some((now, was.to_string())),
            _ => None,
        };
        if let Some((now, was)) = lowered.filter(|_| before.default && param.default) {
            push(
                ChangeKind::SinceLowered,
                true,
                format!(
                    "parameter `{name}` now has `since = {now}` (it had {was}): queued payloads of version {now} or later written before it existed lack it, and its default no longer fills them (a missing argument)"
                ),
                Some(match before.since {
                    Some(was) => format!("keep `since = {was}`, the version that added it"),
                    None => "leave `since` out, as in the lock file".to_owned(),
                }),
            );
        }
    }
    for param in &old.params {
        if !old_matched.contains(param.name.as_str()) {
            // An old worker fills a parameter with a default, or an `Option`, itself.
            if !param.default && !optional(&param.ty) {
                reshaped.push(format!("`{}` removed", param.name));
            }
            push(
                ChangeKind::ParamRemoved,
                false,
                format!(
                    "parameter `{}` was removed: payloads that still carry it run, and the value is ignored",
                    param.name
                ),
                None,
            );
        }
    }
    if to == from && !reshaped.is_empty() {
        push(
            ChangeKind::ArgsChangedInPlace,
            true,
            format!(
                "the arguments changed at the same version {from} ({}): during a rolling deploy, workers still on the old code take the payloads this code writes for theirs, and fail on them or drop values",
                reshaped.join(", ")
            ),
            Some(format!(
                "raise `version` to {} (a new parameter gets `since = {}`): old workers then put the new payloads back until a worker with this code runs them",
                from.saturating_add(1),
                from.saturating_add(1)
            )),
        );
    }
}

fn added_param(
    new: &JobSchema,
    param: &ParamSchema,
    from: u32,
    migrates: bool,
    renamed_from: Option<&str>,
    push: &mut impl FnMut(ChangeKind, bool, String, Option<String>),
) {
    let (name, ty, to) = (&param.name, &param.ty, new.version);
    let next = from.saturating_add(1);
    // A rename without an alias reads as a parameter added and another removed.
    let say_renamed =
        |old_name: &str| format!("if it is `{old_name}` renamed, say so: `#[job(alias = \"{old_name}\")]`");
    if param.default {
        match param.since {
            Some(since) if since <= from => push(
                ChangeKind::ParamAdded,
                true,
                format!(
                    "parameter `{name}: {ty}` is new, but `since = {since}` says version-{since} payloads carry it, and the version-{from} payloads in Redis don't"
                ),
                Some(match renamed_from {
                    Some(old_name) => format!(
                        "{}; if it is new, raise the job to `version = {next}` and write `since = {next}`",
                        say_renamed(old_name)
                    ),
                    None => format!("raise the job to `version = {next}` and write `since = {next}`"),
                }),
            ),
            _ => push(
                ChangeKind::ParamAdded,
                false,
                match renamed_from {
                    Some(old_name) => format!(
                        "parameter `{name}: {ty}` added with a default: older payloads get the default ({}, or their `{old_name}` values are ignored)",
                        say_renamed(old_name)
                    ),
                    None => format!("parameter `{name}: {ty}` added with a default: older payloads get the default"),
                },
                None,
            ),
        }
    } else if optional(ty) {
        // An `Option` reads as `None` where it is missing, `migrate` or not.
        let unless = if migrates { ", unless `migrate` inserts a value" } else { "" };
        push(
            ChangeKind::ParamAdded,
            false,
            format!("parameter `{name}: {ty}` added: older payloads lack it and read it as `None`{unless}"),
            None,
        );
    } else if migrates {
        push(
            ChangeKind::ParamAdded,
            false,
            format!("parameter `{name}: {ty}` added; `migrate` must insert it into payloads older than version {to}"),
            None,
        );
    } else {
        let when = if to > from { format!("version went up to {to}, but ") } else { String::new() };
        let fix = match renamed_from {
            Some(old_name) => format!(
                "if it is `{old_name}` renamed, say so: `#[job(alias = \"{old_name}\")] {name}: {ty}`, and `version = {next}`; if it is new, give it a default, `#[job(default = …)] {name}: {ty}`"
            ),
            None => format!(
                "give it a default, `#[job(default = …)] {name}: {ty}`, and `version = {next}`; make it required in a later version, once `versions` shows no payload older than {next}"
            ),
        };
        push(
            ChangeKind::ParamAdded,
            true,
            format!(
                "{when}parameter `{name}: {ty}` was added without a default: version-{from} payloads in Redis lack it and would fail with a missing argument"
            ),
            Some(fix),
        );
    }
}

/// Whether a parameter of type `ty` reads a missing key as `None`.
fn optional(ty: &str) -> bool {
    normalize_type(ty).starts_with("Option<")
}

/// Compares types as written, ignoring spaces and module paths
/// (`std::string::String` is `String`).
fn same_type(a: &str, b: &str) -> bool {
    normalize_type(a) == normalize_type(b)
}

fn normalize_type(ty: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let mut chars = ty.chars().filter(|c| !c.is_whitespace()).peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            word.clear(); // drop the module the path went through
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            out.push_str(&word);
            word.clear();
            out.push(c);
        }
    }
    out.push_str(&word);
    out
}

/// Whether a parameter of type `new` decodes every JSON value a parameter of
/// type `old` was encoded as: a wider integer or float, or `Option` of it.
fn reads_every_value_of(new: &str, old: &str) -> bool {
    let (new, old) = (normalize_type(new), normalize_type(old));
    // `Option<T>` and `Vec<T>` read every value of the same container of a type `T` reads.
    for container in ["Option<", "Vec<"] {
        let inner = |ty: &str| ty.strip_prefix(container).and_then(|rest| rest.strip_suffix('>')).map(str::to_owned);
        if let (Some(new), Some(old)) = (inner(&new), inner(&old)) {
            return new == old || reads_every_value_of(&new, &old);
        }
    }
    if let Some(inner) = new.strip_prefix("Option<").and_then(|rest| rest.strip_suffix('>')) {
        return inner == old || reads_every_value_of(inner, &old);
    }
    const UNSIGNED: [&str; 5] = ["u8", "u16", "u32", "u64", "u128"];
    const SIGNED: [&str; 5] = ["i8", "i16", "i32", "i64", "i128"];
    let rank = |list: &[&str], ty: &str| list.iter().position(|t| *t == ty);
    match (rank(&UNSIGNED, &old), rank(&UNSIGNED, &new), rank(&SIGNED, &old), rank(&SIGNED, &new)) {
        (Some(a), Some(b), _, _) => b >= a,
        (_, _, Some(a), Some(b)) => b >= a,
        // An unsigned value fits a signed type twice as wide.
        (Some(a), None, None, Some(b)) => b > a,
        _ => old == "f32" && new == "f64",
    }
}

/// Compares the lock file at `path` with the jobs linked into this binary.
pub fn compatible(path: impl AsRef<Path>) -> Result<Report, SchemaError> {
    let lock = Schema::read(path)?;
    Ok(check(&lock, &Schema::linked()?))
}

/// Fails the calling test when the jobs linked into it break payloads written
/// under the lock file at `path` (relative paths start at the crate root,
/// where `cargo test` runs), with the report as the panic message.
///
/// Call it from a test of the crate that defines the jobs, so they are linked:
///
/// ```no_run
/// #[test]
/// fn jobs_stay_compatible_with_the_lock_file() {
///     jobs_core::schema::assert_compatible("jobs.lock.json");
/// }
/// ```
///
/// After a deliberate breaking change (a default dropped once `versions`
/// shows no old payload), record the new signatures with the worker's
/// `schema --write jobs.lock.json`.
#[track_caller]
pub fn assert_compatible(path: impl AsRef<Path>) {
    let path = path.as_ref();
    match compatible(path) {
        Ok(report) if !report.is_breaking() => {}
        Ok(report) => panic!("{}", report.render(&path.display().to_string())),
        Err(error) => panic!("{error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_comparison_ignores_spaces_and_module_paths() {
        assert!(same_type("::std::string::String", "String"));
        assert!(same_type("Option<jobs_core::Timestamp>", "Option < Timestamp >"));
        assert!(same_type("HashMap<String, Vec<u64>>", "std::collections::HashMap<String,Vec<u64>>"));
        assert!(!same_type("Vec<u64>", "Vec<u32>"));
        assert!(!same_type("u64", "String"));
    }

    #[test]
    fn widening_reads_every_old_value() {
        assert!(reads_every_value_of("u64", "u32"));
        assert!(reads_every_value_of("i64", "u32"));
        assert!(reads_every_value_of("Option<u64>", "u8"));
        assert!(reads_every_value_of("Option<String>", "String"));
        assert!(reads_every_value_of("f64", "f32"));
        assert!(!reads_every_value_of("u32", "u64"));
        assert!(!reads_every_value_of("u64", "i64"));
        assert!(!reads_every_value_of("i32", "u32"));
        assert!(!reads_every_value_of("String", "Option<String>"));
        assert!(!reads_every_value_of("f64", "u64"));
        // Inside the same container.
        assert!(reads_every_value_of("Option<u64>", "Option<u32>"));
        assert!(reads_every_value_of("Vec<i64>", "Vec<u16>"));
        assert!(reads_every_value_of("Vec<Option<u64>>", "Vec<u8>"));
        assert!(reads_every_value_of("Vec<Option<u64>>", "Vec<Option<u8>>"));
        assert!(!reads_every_value_of("Option<u32>", "Option<u64>"));
        assert!(!reads_every_value_of("Vec<u64>", "Option<u64>"));
    }
}
