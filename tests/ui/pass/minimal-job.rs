// The smallest job: no options, no arguments, no return type.
use jobs_core::job;

#[job]
async fn ping() {}

fn main() {
    let _ = Ping::perform_now();
    let _ = ping();
}
