// A worker runs jobs on many threads, so a job's future must be `Send`; the
// error points at the function.
use jobs_core::job;

#[job]
async fn send_sms(user_id: u64) {
    let shared = std::rc::Rc::new(user_id);
    std::future::ready(()).await;
    let _ = shared;
}

fn main() {}
