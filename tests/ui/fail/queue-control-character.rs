// A queue name cannot hold a newline (or any control character).
use jobs_core::job;

#[job(queue = "mail\n")]
async fn send_mail(user_id: u64) {
    let _ = user_id;
}

fn main() {}
