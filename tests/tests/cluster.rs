//! Redis Cluster: every key of a namespace is in one slot, so the backend
//! talks to the node that owns it, whichever node's URL it was given, and
//! follows the slot when a replica takes over, gracefully or after its master
//! was killed, without losing or repeating a job.

use std::sync::Arc;
use std::time::Duration;

use jobs_core::{Backend, Client, EnqueueError, JobError, JobSet, Worker, job};
use jobs_redis::RedisBackend;
use jobs_redis::testing::RedisCluster;
use jobs_tests::Ledger;
use tokio::sync::oneshot;

#[job(queue = "cluster")]
async fn count_on_cluster(ledger: String, n: u64) -> Result<u64, JobError> {
    Ledger::named(&ledger).record(n.to_string());
    Ok(n * 2)
}

/// The namespace's keys, by their hash tag.
const QUEUES_KEY: &str = "{jobs}:queues";

/// Enqueues `range` and returns once the ledger holds `total` entries.
async fn enqueue_and_wait(client: &Client, ledger: &str, range: std::ops::Range<u64>, total: usize) {
    for n in range {
        CountOnCluster::perform_later(client, ledger.to_owned(), n).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), Ledger::named(ledger).wait_for(total))
        .await
        .unwrap_or_else(|_| panic!("{total} jobs should have run; ran {:?}", Ledger::named(ledger).entries()));
}

/// Each of `0..total` ran exactly once.
fn ran_once_each(ledger: &str, total: u64) {
    let mut ran: Vec<u64> = Ledger::named(ledger).entries().iter().map(|n| n.parse().unwrap()).collect();
    ran.sort_unstable();
    assert_eq!(ran, (0..total).collect::<Vec<_>>(), "every job ran exactly once");
}

#[test]
fn a_worker_reaches_the_namespace_through_any_node_and_follows_it_across_failovers() {
    // Masters 0 and 1 share the slots, 2 replicates the master of the namespace's slot.
    let probe = RedisCluster::start(2, &[]);
    let owner = probe.owner_of(QUEUES_KEY);
    drop(probe);
    let mut cluster = RedisCluster::start(2, &[owner]);
    let (owner, other, replica) = (owner, 1 - owner, 2);
    assert_eq!(cluster.owner_of(QUEUES_KEY), owner);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = "cluster-failover";
    runtime.block_on(async {
        // The producer is given the URL of the node that does not own the
        // slot; the worker, in a process of its own, the replica's.
        let backend = RedisBackend::connect(&cluster.node(other).url()).await.unwrap();
        let client = Client::new(backend.clone());
        let worker_backend = RedisBackend::connect(&cluster.node(replica).url()).await.unwrap();
        let worker = Worker::builder(worker_backend).queue("cluster", 1).concurrency(4).build().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            worker
                .run_until(async {
                    stopped.await.ok();
                })
                .await
        });

        // Enqueue, run, and a value waited for on a blocking connection.
        enqueue_and_wait(&client, ledger, 0..20, 20).await;
        let jid = CountOnCluster::perform_later(&client, "cluster-values".into(), 21).await.unwrap();
        assert_eq!(client.handle::<CountOnCluster>(jid).wait(Duration::from_secs(30)).await.unwrap(), 42);
        // A scheduled job is promoted by the worker's maintenance.
        CountOnCluster::perform_in(&client, Duration::from_millis(10), "cluster-later".into(), 1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), Ledger::named("cluster-later").wait_for(1)).await.unwrap();

        // A graceful failover: the old master turns replica and answers MOVED.
        let bystander = RedisBackend::connect(&cluster.node(other).url()).await.unwrap();
        cluster.node(replica).command(&["CLUSTER", "FAILOVER"]);
        cluster.wait_until("the replica to take over", |c| c.is_master(replica) && !c.is_master(owner));
        enqueue_and_wait(&client, ledger, 20..40, 40).await;
        // Pipelines and `MULTI`s (a heartbeat, a cancellation) follow the slot too: redis-rs
        // gathers their commands' `MOVED` into one error, which used to read as permanent.
        let worker_id = jobs_core::WorkerId::generate();
        Backend::heartbeat(&bystander, &worker_id, Duration::from_secs(10)).await.unwrap();
        Client::new(bystander).cancel(&jobs_core::JobId::new()).await.unwrap();

        // The master killed: its replica (the old master) takes over, and the
        // backend, unable to reach the node it knew, asks the others.
        let backend_dyn: Arc<dyn Backend> = Arc::new(backend.clone());
        tokio::time::timeout(Duration::from_secs(30), async {
            while backend_dyn.count(&JobSet::InFlight).await.unwrap() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the worker's acknowledgements to be written");
        assert!(cluster.node(replica).command(&["WAIT", "1", "5000"]).starts_with(":1"), "the replica caught up");
        cluster.node_mut(replica).kill();
        cluster.node(owner).command(&["CLUSTER", "FAILOVER", "TAKEOVER"]);
        cluster.wait_until("the old master to take over again", |c| c.is_master(owner));
        let mut enqueued = false;
        for _ in 0..300 {
            // The first enqueues may fail while the backend finds the new master: the caller retries.
            match CountOnCluster::perform_later(&client, ledger.to_owned(), 40).await {
                Ok(_) => {
                    enqueued = true;
                    break;
                }
                Err(EnqueueError::Backend { source, .. }) if source.is_transient() => {}
                Err(error) => panic!("only transient errors during a failover: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(enqueued, "the backend should find the new master");
        enqueue_and_wait(&client, ledger, 41..60, 60).await;

        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
    });
    ran_once_each(ledger, 60);
}

#[test]
fn a_backend_on_a_given_pool_cannot_follow_the_slot_and_says_how_to() {
    let cluster = RedisCluster::start(2, &[]);
    let other = 1 - cluster.owner_of(QUEUES_KEY);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = jobs_redis::deadpool_redis::Config::from_url(cluster.node(other).url());
        let pool = config.create_pool(Some(jobs_redis::deadpool_redis::Runtime::Tokio1)).unwrap();
        // Refused at once: connect reads the namespace's keys, and the node answers MOVED.
        let error = RedisBackend::from_pool(pool, "jobs").await.err().expect("refused");
        let owner_port = cluster.node(1 - other).port().to_string();
        let message = error.to_string();
        assert!(!error.is_transient(), "{message}");
        assert!(message.contains("Redis Cluster") && message.contains(&owner_port), "{message}");
        assert!(message.contains("RedisBackend::connect"), "{message}");
    });
}

/// The namespace's slot on its way to another node (resharding: `MIGRATING`).
fn migrating(cluster: &RedisCluster, owner: usize, target: usize) -> String {
    let slot = cluster.node(owner).command(&["CLUSTER", "KEYSLOT", QUEUES_KEY]);
    let slot = slot.trim().trim_start_matches(':').to_owned();
    let (owner_id, target_id) = (cluster.id(owner), cluster.id(target));
    cluster.node(target).command(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &owner_id]);
    cluster.node(owner).command(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]);
    slot
}

/// While the slot migrates, Redis refuses a script the keys it reaches that
/// the node no longer holds (a queue it derives from a payload), after the
/// script's earlier writes, which it does not undo: putting a job back or
/// promoting one must write its queue before it removes the job, so that a
/// refusal leaves the job where it was, and the error is one to retry.
#[test]
fn a_slot_on_its_way_to_another_node_loses_no_job() {
    let cluster = RedisCluster::start(2, &[]);
    let owner = cluster.owner_of(QUEUES_KEY);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let backend = RedisBackend::connect(&cluster.node(owner).url()).await.unwrap();
        let push = |run_at| {
            let payload = jobs_core::Envelope::new("probe", 1, "default", serde_json::Map::new()).to_json();
            jobs_core::PushJob { jid: jobs_core::JobId::new(), queue: "default".into(), payload, run_at, unique: None }
        };
        backend.push(vec![push(None)]).await.unwrap();
        let takes = [jobs_core::QueueTake { queue: "default".into(), max: 1 }];
        let worker = jobs_core::WorkerId::generate();
        let request =
            jobs_core::FetchRequest { queues: &takes, max: 1, worker: &worker, lease: Duration::from_secs(30) };
        let fetched = backend.fetch(request).await.unwrap();
        assert_eq!(fetched.len(), 1);
        backend.push(vec![push(Some(jobs_core::now_millis() + 3_600_000))]).await.unwrap();
        // Every key the scripts declare exists (else Redis refuses them before they run).
        cluster.node(owner).command(&["ZADD", "{jobs}:retry", "99999999999999", "not due"]);
        // The queue emptied by the fetch is gone from the node: a script cannot reach it now.
        migrating(&cluster, owner, 1 - owner);
        let error = backend.put_back(&[fetched[0].lease.clone()]).await.unwrap_err();
        assert!(error.is_transient(), "{error}");
        let error = backend.promote_due(Some(u64::MAX)).await.unwrap_err();
        assert!(error.is_transient(), "{error}");
        let node = cluster.node(owner);
        assert_eq!(node.command(&["HLEN", "{jobs}:inflight"]).trim(), ":1", "the job is still in flight");
        assert_eq!(node.command(&["ZCARD", "{jobs}:scheduled"]).trim(), ":1", "the scheduled job is still scheduled");
    });
}
