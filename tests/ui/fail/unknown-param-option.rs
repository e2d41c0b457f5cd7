// A misspelled parameter option is named, with the options that exist.
use jobs_core::job;

#[job]
async fn send_sms(user_id: u64, #[job(fallback = "en".to_string())] locale: String) {
    let _ = (user_id, locale);
}

fn main() {}
