// A parameter alias must not collide with a payload key of the same job.
use jobs_core::job;

#[job]
async fn send_sms(
    #[job(alias = "phone")] user_id: u64,
    phone: String,
    #[job(alias = "body")] body: String,
    #[job(alias = "lang")] locale: String,
    #[job(alias = "lang")] language: String,
) {
    let _ = (user_id, phone, body, locale, language);
}

fn main() {}
