//! The quickstart: enqueue bulk mail, then SMS, then an old version-1 SMS
//! payload; one worker drains them on the embedded backend, no server needed.
//!
//! Run it with `cargo run -p examples --bin quickstart`.

use examples::{SendConfirmationSms, SendPromotionalMail, journal};
use jobs_core::{Client, MemoryBackend, RawJob, Worker};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = MemoryBackend::new();
    let client = Client::new(backend.clone());

    println!("enqueueing, in this order:");
    for user_id in 1..=4 {
        SendPromotionalMail::perform_later(&client, user_id, "black-friday".into()).await?;
        println!("  bulk      send_promotional_mail user_id={user_id}");
    }
    for (user_id, locale) in [(7, "en"), (8, "es")] {
        SendConfirmationSms::perform_later(&client, user_id, locale.into()).await?;
        println!("  critical  send_confirmation_sms user_id={user_id} locale={locale}");
    }
    // A payload written by the previous release (version 1, no `locale`), still waiting in the queue.
    let old = RawJob {
        job: "send_confirmation_sms".into(),
        version: 1,
        queue: "critical".into(),
        args: serde_json::json!({ "user_id": 9 }),
    };
    client.enqueue_raw(old).await?;
    println!("  critical  send_confirmation_sms user_id=9 (raw version-1 payload, no locale)");

    // Strict priority, one job at a time, so the order is plain to see.
    let worker = Worker::builder(backend)
        .queue("critical", 10)
        .queue("default", 3)
        .queue("bulk", 1)
        .strict()
        .concurrency(1)
        .build()?;
    let report = worker.drain().await?;

    println!("\nthe worker ran, in this order:");
    let ran = journal();
    for (n, line) in ran.iter().enumerate() {
        println!("  {}. {line}", n + 1);
    }
    println!("\n{} succeeded, {} retried, {} dead.", report.succeeded, report.retried, report.dead);
    let last_sms = ran.iter().rposition(|line| line.starts_with("send_confirmation_sms"));
    let first_mail = ran.iter().position(|line| line.starts_with("send_promotional_mail"));
    if let (Some(last_sms), Some(first_mail)) = (last_sms, first_mail) {
        let verdict = if last_sms < first_mail { "jumped ahead of" } else { "did NOT jump ahead of" };
        println!("The SMS, enqueued last, {verdict} the bulk mail enqueued first.");
    }
    if let Some(v1) = ran.iter().find(|line| line.contains("(payload v1)")) {
        let locale = v1.split("locale=").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or("?");
        println!("The version-1 payload, which had no locale, ran with locale {locale} (the default).");
    }
    Ok(())
}
