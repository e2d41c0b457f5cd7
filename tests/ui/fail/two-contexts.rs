// A job takes its context once.
use jobs_core::{JobContext, job};

#[job]
async fn send_sms(user_id: u64, ctx: &JobContext, again: &JobContext) {
    let _ = (user_id, ctx, again);
}

fn main() {}
