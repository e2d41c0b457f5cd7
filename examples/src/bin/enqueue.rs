//! The web process's side: enqueues demo jobs into Redis and exits, while a
//! separate worker process (`--bin worker`) runs them.
//!
//! ```text
//! JOBS_REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin enqueue -- 100
//! ```

use examples::{SendConfirmationSms, SendPromotionalMail};
use jobs_core::{Client, JobSet};
use jobs_redis::RedisBackend;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("JOBS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let count: u64 = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(10);
    let backend = RedisBackend::connect(&url).await?;
    let client = Client::new(backend.clone());
    // A request handler would do exactly this: enqueue by id and return.
    let mails = (1..=count).map(|user_id| SendPromotionalMail { user_id, campaign: "black-friday".into() });
    client.enqueue_many(mails).await?;
    for user_id in 1..=count {
        SendConfirmationSms::perform_later(&client, user_id, "en".into()).await?;
    }
    let waiting = jobs_core::Backend::count(&backend, &JobSet::Queue("bulk".into())).await?;
    println!("enqueued {count} SMS on `critical` and {count} mails on `bulk` ({waiting} mails waiting)");
    Ok(())
}
