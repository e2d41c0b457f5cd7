// A worker decodes arguments into concrete types, so a job cannot be generic.
use jobs_core::job;

#[job]
async fn send_sms<T>(user_id: T)
where
    T: Send,
{
    let _ = user_id;
}

fn main() {}
