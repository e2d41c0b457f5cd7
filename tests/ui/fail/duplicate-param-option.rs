// A parameter option given twice, even across two attributes, is reported at its second occurrence.
use jobs_core::job;

#[job(version = 3)]
async fn send_sms(
    user_id: u64,
    #[job(since = 2, default = "en".to_string())]
    #[job(since = 3)]
    locale: String,
) {
    let _ = (user_id, locale);
}

fn main() {}
