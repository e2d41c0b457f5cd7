// A parameter added after version 1 needs a default (or a migrate function),
// or payloads written by the older version cannot run.
use jobs_core::job;

#[job(version = 2)]
async fn send_sms(user_id: u64, #[job(since = 2)] locale: String) {
    let _ = (user_id, locale);
}

fn main() {}
