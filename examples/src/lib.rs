//! Demo jobs for the quickstart and the examples: an SMS that must not wait
//! (`critical`), promotional mail (`bulk`), and a clean-up (`default`).
//!
//! Every job takes ids and loads fresh data inside the job, never a copy of a
//! record made when the job was enqueued.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use jobs_core::{JobContext, JobError, job};

/// A user as the application's database holds it.
#[derive(Clone, Debug)]
pub struct User {
    /// The primary key.
    pub id: u64,
    /// The phone number the SMS goes to.
    pub phone: String,
    /// The address mail goes to.
    pub email: String,
}

/// Loads a user by id: the stand-in for a database query.
pub async fn load_user(user_id: u64) -> Result<User, JobError> {
    if user_id == 0 || user_id > 1_000_000 {
        return Err(JobError::fatal(format!("user {user_id} does not exist")));
    }
    Ok(User { id: user_id, phone: format!("+55 11 9{user_id:04}-0000"), email: format!("user{user_id}@example.com") })
}

fn journal_cell() -> &'static Mutex<Vec<String>> {
    static JOURNAL: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    JOURNAL.get_or_init(Mutex::default)
}

/// Records that a job ran, in order, so demos can show what happened, and logs it.
pub fn note(line: String) {
    tracing::info!(target: "examples", "ran {line}");
    journal_cell().lock().unwrap_or_else(|p| p.into_inner()).push(line);
}

/// Everything the demo jobs did in this process, in the order they ran.
pub fn journal() -> Vec<String> {
    journal_cell().lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Sends the phone-confirmation code. Must not wait behind bulk mail.
///
/// Version 2 added `locale`; version-1 payloads still in the queue run with
/// the default `"pt-BR"`.
#[job(queue = "critical", version = 2, retries = 5, timeout = "30s")]
pub async fn send_confirmation_sms(
    user_id: u64,
    #[job(since = 2, default = "pt-BR".to_string())] locale: String,
    ctx: &JobContext,
) -> Result<(), JobError> {
    let user = load_user(user_id).await?;
    note(format!(
        "send_confirmation_sms  user_id={} locale={locale} phone={} (payload v{})",
        user.id,
        user.phone,
        ctx.payload_version()
    ));
    Ok(())
}

/// Sends one promotional e-mail of a campaign. Bulk: may wait.
#[job(queue = "bulk", retries = 3)]
pub async fn send_promotional_mail(user_id: u64, campaign: String) -> Result<(), JobError> {
    let user = load_user(user_id).await?;
    note(format!("send_promotional_mail  user_id={} campaign={campaign} to={}", user.id, user.email));
    Ok(())
}

/// Deletes expired sessions older than `max_age_days`.
#[job]
pub async fn clean_up_sessions(#[job(default = 30)] max_age_days: u32) -> Result<(), JobError> {
    note(format!("clean_up_sessions      max_age_days={max_age_days}"));
    Ok(())
}

/// Counts words per user for a report; shows map arguments.
#[job(queue = "default")]
pub async fn tally_words(counts: HashMap<String, u64>) -> Result<(), JobError> {
    let total: u64 = counts.values().sum();
    note(format!("tally_words            users={} words={total}", counts.len()));
    Ok(())
}

/// A thumbnail a worker made: where to fetch it, and its width in pixels.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Thumbnail {
    /// Where the web app serves it.
    pub url: String,
    /// Its width in pixels.
    pub width: u32,
}

/// The widths [`make_thumbnail`] accepts, in pixels.
pub const THUMBNAIL_WIDTHS: std::ops::RangeInclusive<u32> = 16..=1024;

/// Makes a thumbnail of an uploaded image. Returns a value, so its outcome is
/// kept (a day by default) for `Client::handle` and the web app's status page.
///
/// Takes the image's id, not the image: a real job loads the upload here.
#[job(queue = "images", retries = 3)]
pub async fn make_thumbnail(image_id: u64, width: u32, ctx: &JobContext) -> Result<Thumbnail, JobError> {
    if image_id == 0 || image_id > 1_000_000 {
        return Err(JobError::fatal(format!("image {image_id} does not exist")));
    }
    if !THUMBNAIL_WIDTHS.contains(&width) {
        return Err(JobError::fatal(format!("width {width} is out of range: thumbnails are 16 to 1024 pixels wide")));
    }
    // Resizes in strips, stopping between two when the job was cancelled.
    for _strip in 0..4 {
        if ctx.is_cancelled() {
            return Err(JobError::fatal("cancelled"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    note(format!("make_thumbnail         image_id={image_id} width={width}"));
    Ok(Thumbnail { url: format!("/thumbnails/{image_id}-{width}.svg"), width })
}

pub mod profile;
pub mod web;
