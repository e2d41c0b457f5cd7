// Every job and parameter option at once, with context injection and the
// argument types that `JobArg` accepts.
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use jobs_core::{Args, Client, Job, JobContext, JobError, MemoryBackend, Timestamp, job};

mod migrations {
    use jobs_core::{Args, JobError};

    pub fn upgrade_import(from: u32, args: &mut Args) -> Result<(), JobError> {
        if from < 3 {
            args.insert("batch".to_owned(), 100.into());
        }
        Ok(())
    }
}

/// Imports a feed.
#[job(
    name = "feeds.import",
    aliases = ["import_feed", "feed_import"],
    queue = "bulk",
    version = 3,
    retries = 7,
    timeout = "1m30s",
    unique_for = "1h",
    keep_result = "2h",
    migrate = migrations::upgrade_import
)]
pub async fn import_feed(
    feed_id: u64,
    #[job(since = 2, default = "pt-BR".to_string(), alias = "lang")] locale: String,
    ctx: &JobContext,
    #[job(default)] tags: Vec<String>,
    #[job(since = 3)] batch: u32,
    note: Option<String>,
    counts: HashMap<String, u64>,
    #[job(since = 2, default)] not_before: Option<Timestamp>,
    mut attempts_seen: Vec<u32>,
) -> Result<(), JobError> {
    attempts_seen.push(ctx.attempt());
    let _ = (feed_id, locale, tags, batch, note, counts, not_before, attempts_seen);
    Ok(())
}

/// Keeps working when an argument shares a name with a helper's own parameter.
#[job]
pub(crate) async fn notify(client: u64, delay: u32, at: String, r#type: String) -> Result<u8, std::io::Error> {
    let _ = (client, delay, at, r#type);
    Ok(1)
}

async fn enqueue(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    ImportFeed::perform_later(client, 1, "en".into(), vec![], 10, None, HashMap::new(), None, vec![]).await?;
    ImportFeed::perform_in(
        client,
        Duration::from_secs(60),
        2,
        "en".into(),
        vec![],
        10,
        None,
        HashMap::new(),
        None,
        vec![],
    )
    .await?;
    ImportFeed::perform_at(
        client,
        SystemTime::now(),
        3,
        "en".into(),
        vec![],
        10,
        None,
        HashMap::new(),
        Some(Timestamp::now()),
        vec![],
    )
    .await?;
    ImportFeed::perform_now(1, "en".into(), vec![], 10, None, HashMap::new(), None, vec![]).await.unwrap();
    Notify::perform_later(client, 1, 2, "now".into(), "sms".into()).await?;
    Notify::perform_in(client, Duration::from_secs(1), 1, 2, "now".into(), "sms".into()).await?;
    Notify::perform_at(client, SystemTime::now(), 1, 2, "now".into(), "sms".into()).await?;
    Notify::perform_now(1, 2, "now".into(), "sms".into()).await.unwrap();
    Ok(())
}

fn main() {
    assert_eq!(ImportFeed::NAME, "feeds.import");
    assert_eq!(ImportFeed::ALIASES, ["import_feed", "feed_import"]);
    assert_eq!(ImportFeed::QUEUE, "bulk");
    assert_eq!(ImportFeed::VERSION, 3);
    assert_eq!(ImportFeed::OPTIONS.retries, Some(7));
    assert_eq!(ImportFeed::OPTIONS.timeout, Some(Duration::from_secs(90)));
    assert_eq!(ImportFeed::OPTIONS.unique_for, Some(Duration::from_secs(3600)));
    assert_eq!(ImportFeed::OPTIONS.keep_result, Some(Duration::from_secs(7200)));
    assert!(ImportFeed::MIGRATE.is_some());

    let params: Vec<_> = ImportFeed::PARAMS.iter().map(|p| (p.name, p.ty, p.since, p.explicit_since)).collect();
    assert_eq!(
        params,
        [
            ("feed_id", "u64", 1, false),
            ("locale", "String", 2, true),
            ("tags", "Vec<String>", 1, false),
            ("batch", "u32", 3, true),
            ("note", "Option<String>", 1, false),
            ("counts", "HashMap<String, u64>", 1, false),
            ("not_before", "Option<Timestamp>", 2, true),
            ("attempts_seen", "Vec<u32>", 1, false),
        ]
    );
    assert_eq!(ImportFeed::PARAMS[1].aliases, ["lang"]);
    let locale = ImportFeed::PARAMS[1].default.map(|default| default());
    assert_eq!(locale, Some(Ok(serde_json::json!("pt-BR"))));
    let tags = ImportFeed::PARAMS[2].default.map(|default| default());
    assert_eq!(tags, Some(Ok(serde_json::json!([]))));

    let job = ImportFeed {
        feed_id: 7,
        locale: "en".into(),
        tags: vec!["a".into()],
        batch: 5,
        note: None,
        counts: HashMap::new(),
        not_before: None,
        attempts_seen: vec![],
    };
    let args: Args = job.to_args().unwrap();
    assert_eq!(args["feed_id"], 7);
    let back = ImportFeed::from_args(args).unwrap();
    assert_eq!((back.feed_id, back.locale.as_str(), back.batch), (7, "en", 5));

    assert_eq!(Notify::NAME, "notify");
    let names: Vec<_> = Notify::PARAMS.iter().map(|p| p.name).collect();
    assert_eq!(names, ["client", "delay", "at", "type"]);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = Client::new(MemoryBackend::new());
        enqueue(&client).await.unwrap();
    });
}
