// The parameter attribute may be written as the function's is: `#[jobs_core::job(...)]`.
#[jobs_core::job(version = 2)]
async fn send_sms(user_id: u64, #[jobs_core::job(since = 2, default)] locale: String) {
    let _ = (user_id, locale);
}

fn main() {
    let _ = <SendSms as jobs_core::Job>::NAME;
}
