//! The registry: duplicate names are a start-up error naming both functions,
//! and an empty registry refuses to start with the fix in the message.

use jobs_core::{MemoryBackend, Registry, Worker, WorkerError, job};

mod billing {
    #[jobs_core::job(name = "charge")]
    pub async fn charge_card(invoice_id: u64) {
        let _ = invoice_id;
    }
}

mod legacy {
    #[jobs_core::job(name = "charge_v0", aliases = ["charge"])]
    pub async fn old_charge(invoice_id: u64) {
        let _ = invoice_id;
    }
}

#[job]
async fn harmless() {}

#[test]
fn duplicate_job_names_are_a_start_up_error_naming_both_functions() {
    let error = Worker::builder(MemoryBackend::new()).build().err().unwrap();
    let WorkerError::DuplicateJob { name, first, second } = &error else { panic!("{error}") };
    assert_eq!(name, "charge");
    assert_eq!((first.as_str(), second.as_str()), ("registry::billing::charge_card", "registry::legacy::old_charge"));
    assert_eq!(
        error.to_string(),
        "job name `charge` is registered twice: by `registry::billing::charge_card` and by `registry::legacy::old_charge`; rename one or drop the alias"
    );
}

#[test]
fn empty_registry_refuses_to_start_and_says_how_to_link_jobs() {
    let registry = Registry::from_jobs(Vec::new()).unwrap();
    let error = Worker::builder(MemoryBackend::new()).registry(registry).build().err().unwrap();
    assert!(matches!(error, WorkerError::NoJobsRegistered));
    assert!(error.to_string().contains("`use my_app_jobs as _;`"), "{error}");
}

#[test]
fn a_registry_of_some_jobs_serves_their_queues() {
    let harmless = jobs_core::JobRegistration::of::<Harmless>("registry::harmless");
    let registry = Registry::from_jobs(vec![Box::leak(Box::new(harmless))]).unwrap();
    assert_eq!(registry.queues(), ["default"]);
    assert!(registry.get("harmless").is_some());
    let worker = Worker::builder(MemoryBackend::new()).registry(registry).build().unwrap();
    assert_eq!(worker.queues(), [("default".to_owned(), 1)]);
}

#[job(queue = "bulk")]
async fn newsletter() {}

#[job(queue = "critical")]
async fn sms() {}

fn two_queues() -> Registry {
    let jobs = [
        jobs_core::JobRegistration::of::<Newsletter>("registry::newsletter"),
        jobs_core::JobRegistration::of::<Sms>("registry::sms"),
    ];
    Registry::from_jobs(jobs.into_iter().map(|job| &*Box::leak(Box::new(job))).collect()).unwrap()
}

/// Strict order with no queue named would be the registry's (name) order:
/// `bulk` before `critical`. It is refused, naming the queues to order.
#[test]
fn strict_with_no_queue_named_is_refused() {
    let error = Worker::builder(MemoryBackend::new()).registry(two_queues()).strict().build().err().unwrap();
    assert_eq!(
        error.to_string(),
        "worker configuration: strict serves queues in the order given, and none was given: name them most important first with `queue` (`-q` on the command line), from bulk, critical"
    );
    let named = Worker::builder(MemoryBackend::new()).registry(two_queues()).strict();
    let worker = named.queue("critical", 1).queue("bulk", 1).build().unwrap();
    assert_eq!(worker.queues(), [("critical".to_owned(), 1), ("bulk".to_owned(), 1)]);
}

/// A queue no registered job uses (a typo in `-q`) and a limit that limits
/// nothing are each said at start, and are not errors.
#[test]
fn a_queue_no_job_uses_and_a_limit_above_the_concurrency_are_warned_of() {
    let (logs, _guard) = jobs_tests::Logs::capture();
    Worker::builder(MemoryBackend::new())
        .registry(two_queues())
        .queue("critical", 10)
        .queue("bulk", 1)
        .queue("critcal", 1)
        .concurrency(5)
        .queue_limit("bulk", 50)
        .queue_limit("critical", 2)
        .build()
        .unwrap();
    let text = logs.text();
    assert!(text.contains("queue `critcal` is served, but no job registered in this binary uses it"), "{text}");
    assert!(text.contains("queue_limit of `bulk` (50) is not below the concurrency (5): it limits nothing"), "{text}");
    assert_eq!(text.matches("WARN").count(), 2, "nothing about `critical`'s limit: {text}");
}

/// A worker given some of the queues says once which jobs another worker must serve.
#[test]
fn jobs_on_queues_not_served_are_named_in_one_warning() {
    let (logs, _guard) = jobs_tests::Logs::capture();
    Worker::builder(MemoryBackend::new()).registry(two_queues()).queue("mail", 1).build().unwrap();
    let text = logs.text();
    assert_eq!(text.matches("on queues this worker does not serve").count(), 1, "{text}");
    assert!(
        text.contains(
            "2 registered job(s) on queues this worker does not serve, which another worker must serve: newsletter (bulk), sms (critical)"
        ),
        "{text}"
    );
}
