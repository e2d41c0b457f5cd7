// The job's struct is named after the function, which needs a letter in its name.
use jobs_core::job;

#[job]
async fn __(user_id: u64) {
    let _ = user_id;
}

fn main() {}
