// An error that is only a message converts when written out in the return
// type; behind a type alias the macro cannot see it, and says what to do.
use jobs_core::job;

type SmsResult = Result<(), String>;

#[job]
async fn send_sms(user_id: u64) -> SmsResult {
    Err(format!("no sms for {user_id}"))
}

fn main() {}
