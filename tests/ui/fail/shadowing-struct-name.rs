// The job's struct is named after the function: `string` would make a
// struct `String` that shadows the prelude's.
use jobs_core::job;

#[job]
async fn string(text: u64) {
    let _ = text;
}

fn main() {}
