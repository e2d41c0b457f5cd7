// The context is injected by shared reference, and takes no options.
use jobs_core::{JobContext, job};

#[job]
async fn send_sms(user_id: u64, ctx: JobContext) {
    let _ = (user_id, ctx);
}

#[job]
async fn send_email(user_id: u64, #[job(default)] ctx: &mut JobContext) {
    let _ = (user_id, ctx);
}

#[job]
async fn send_push(user_id: u64, ctx: &'static JobContext) {
    let _ = (user_id, ctx);
}

fn main() {}
