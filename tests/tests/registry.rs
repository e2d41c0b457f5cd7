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
