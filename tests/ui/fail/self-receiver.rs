// A method cannot be a job: a worker has no `self` to call it on.
use jobs_core::job;

struct Mailer;

impl Mailer {
    #[job]
    async fn send_welcome(&self, user_id: u64) {
        let _ = user_id;
    }
}

fn main() {
    let _ = Mailer.send_welcome(1);
}
