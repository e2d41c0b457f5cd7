// A job's error must convert into `JobError`: a plain number does not.
use jobs_core::job;

#[job]
async fn send_sms(user_id: u64) -> Result<(), u32> {
    Err(user_id as u32)
}

fn main() {}
