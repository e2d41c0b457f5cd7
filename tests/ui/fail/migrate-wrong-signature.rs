// A `migrate` function has the `MigrateFn` signature; a mismatch is reported at the path.
use jobs_core::{Args, job};

fn upgrade(args: &mut Args) {
    let _ = args;
}

#[job(version = 2, migrate = upgrade)]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
