// A database record cannot be a job argument: pass its id instead.
use jobs_core::job;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct UserRow {
    pub id: u64,
    pub email: String,
}

#[job]
async fn send_welcome(user: UserRow) {
    let _ = user;
}

fn main() {}
