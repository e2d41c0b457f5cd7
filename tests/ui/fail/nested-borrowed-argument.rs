// Borrowed types inside another type are not owned either.
use jobs_core::job;

#[job]
async fn tag_users(names: Vec<&str>, note: Option<&str>) {
    let _ = (names, note);
}

fn main() {}
