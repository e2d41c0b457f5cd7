//! No job escapes a rolled-back transaction: `after_commit` stages and pushes
//! only on `Ok`, the plain client is refused inside a scope (and only there),
//! `Staged` flushes or discards, and a failed flush hands the jobs back.

use std::time::Duration;

use jobs_core::{Client, EnqueueError, FlushError, JobSet, Staged, after_commit, job};
use jobs_tests::TestBackend;
use tokio::sync::oneshot;

jobs_tests::conformance!(
    a_committed_scope_pushes_every_staged_job_after_it_returns,
    a_failed_scope_pushes_nothing_and_its_error_passes_through,
    a_panicking_scope_pushes_nothing,
    the_plain_client_is_refused_inside_a_scope_across_awaits,
    the_guard_does_not_leak_into_other_tasks_or_outlive_the_scope,
    a_nested_scope_commits_or_rolls_back_with_the_outer_one,
    what_a_nested_scope_enqueues_through_the_outer_handle_rolls_back_with_it,
    a_scope_two_levels_down_rolls_back_what_the_outer_handle_enqueued,
    staged_flushes_after_commit_and_discards_on_drop,
    a_handle_used_after_its_scope_ended_is_refused,
    a_staged_flush_inside_a_scope_waits_for_the_scope,
);

#[job(queue = "mail")]
async fn send_confirmation_email(user_id: u64) {
    let _ = user_id;
}

#[job(queue = "critical")]
async fn notify_security_team(user_id: u64) {
    let _ = user_id;
}

/// The failure of the examples' scopes: the database's, or a flush.
#[derive(Debug)]
enum AppError {
    Rejected(&'static str),
    Enqueue(EnqueueError),
    Flush(FlushError),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Rejected(why) => f.write_str(why),
            AppError::Enqueue(error) => write!(f, "{error}"),
            AppError::Flush(error) => write!(f, "{error}"),
        }
    }
}

impl From<EnqueueError> for AppError {
    fn from(error: EnqueueError) -> Self {
        AppError::Enqueue(error)
    }
}

impl From<FlushError> for AppError {
    fn from(error: FlushError) -> Self {
        AppError::Flush(error)
    }
}

async fn counts(t: &TestBackend) -> (usize, usize, usize) {
    let count = |set: JobSet| async move { t.backend().count(&set).await.unwrap() };
    (
        count(JobSet::Queue("mail".into())).await,
        count(JobSet::Queue("critical".into())).await,
        count(JobSet::Scheduled).await,
    )
}

async fn a_committed_scope_pushes_every_staged_job_after_it_returns(t: &TestBackend) {
    let client = t.client();
    let value = after_commit(&client, |jobs| async move {
        SendConfirmationEmail::perform_later(&jobs, 1).await?;
        NotifySecurityTeam::perform_later(&jobs, 1).await?;
        SendConfirmationEmail::perform_in(&jobs, Duration::from_secs(3600), 2).await?;
        // Staged, not pushed: a worker cannot see them before the commit.
        assert_eq!(counts(t).await, (0, 0, 0));
        Ok::<_, AppError>("committed")
    })
    .await
    .unwrap();
    assert_eq!(value, "committed");
    assert_eq!(counts(t).await, (1, 1, 1));
}

async fn a_failed_scope_pushes_nothing_and_its_error_passes_through(t: &TestBackend) {
    let client = t.client();
    let result: Result<(), AppError> = after_commit(&client, |jobs| async move {
        SendConfirmationEmail::perform_later(&jobs, 1).await?;
        NotifySecurityTeam::perform_later(&jobs, 1).await?;
        Err(AppError::Rejected("the e-mail address is taken"))
    })
    .await;
    assert!(matches!(result, Err(AppError::Rejected("the e-mail address is taken"))), "{result:?}");
    assert_eq!(counts(t).await, (0, 0, 0));
}

async fn a_panicking_scope_pushes_nothing(t: &TestBackend) {
    let client = t.client();
    let scope = tokio::spawn(async move {
        after_commit(&client, |jobs| async move {
            SendConfirmationEmail::perform_later(&jobs, 1).await?;
            if jobs.is_staging() {
                panic!("the profile update panicked");
            }
            Ok::<_, AppError>(())
        })
        .await
    });
    let joined = scope.await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(counts(t).await, (0, 0, 0));
}

/// A nested service that grabbed the plain client (the mistake the guard catches).
async fn validate_user_safety_data(client: &Client, user_id: u64) -> Result<(), EnqueueError> {
    tokio::task::yield_now().await;
    NotifySecurityTeam::perform_later(client, user_id).await.map(drop)
}

async fn the_plain_client_is_refused_inside_a_scope_across_awaits(t: &TestBackend) {
    let client = t.client();
    let plain = client.clone();
    let result = after_commit(&client, |jobs| async move {
        SendConfirmationEmail::perform_later(&jobs, 1).await?;
        tokio::time::sleep(Duration::from_millis(1)).await; // the guard follows the task across awaits
        let leaked = validate_user_safety_data(&plain, 1).await;
        let error = leaked.unwrap_err();
        assert!(matches!(&error, EnqueueError::InsideTransaction { job } if job == "notify_security_team"));
        assert_eq!(
            error.to_string(),
            "job `notify_security_team`: enqueued through the plain client inside a transaction scope; enqueue through the scope's handle so the job is pushed only after commit"
        );
        // Through the scope's handle, the same service is fine.
        validate_user_safety_data(&jobs, 1).await?;
        Ok::<_, AppError>(())
    })
    .await;
    result.unwrap();
    assert_eq!(counts(t).await, (1, 1, 0));
}

async fn the_guard_does_not_leak_into_other_tasks_or_outlive_the_scope(t: &TestBackend) {
    let client = t.client();
    let (scope_open, wait_for_scope) = oneshot::channel::<()>();
    let (other_done, wait_for_other) = oneshot::channel::<Result<(), EnqueueError>>();
    // Another request's task enqueues with the plain client while the scope is open.
    let other_client = client.clone();
    let other = tokio::spawn(async move {
        wait_for_scope.await.unwrap();
        let result = SendConfirmationEmail::perform_later(&other_client, 2).await.map(drop);
        other_done.send(result).unwrap();
    });
    after_commit(&client, |jobs| async move {
        SendConfirmationEmail::perform_later(&jobs, 1).await?;
        scope_open.send(()).unwrap();
        wait_for_other.await.unwrap()?;
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    other.await.unwrap();
    // After the scope, the same task may use the plain client again.
    SendConfirmationEmail::perform_later(&client, 3).await.unwrap();
    assert_eq!(counts(t).await, (3, 0, 0));
}

/// What the nested-scope tests leave: one mail, and one critical job, user 3's.
async fn one_mail_and_the_critical_job_of_user_3(t: &TestBackend) {
    assert_eq!(counts(t).await, (1, 1, 0));
    let critical = t.backend().list(&JobSet::Queue("critical".into()), 0, 10).await.unwrap();
    assert!(critical[0].payload.contains("\"user_id\":3"), "{critical:?}");
}

async fn a_nested_scope_commits_or_rolls_back_with_the_outer_one(t: &TestBackend) {
    let client = t.client();
    let rolled_back: Result<(), AppError> = after_commit(&client, |outer| async move {
        SendConfirmationEmail::perform_later(&outer, 1).await?;
        after_commit(&outer, |inner| async move {
            NotifySecurityTeam::perform_later(&inner, 1).await?;
            Ok::<_, AppError>(())
        })
        .await?;
        // The inner scope's jobs wait for the outer commit, like a savepoint's.
        assert_eq!(counts(t).await, (0, 0, 0));
        Err(AppError::Rejected("the outer transaction rolled back"))
    })
    .await;
    assert_eq!(rolled_back.unwrap_err().to_string(), "the outer transaction rolled back");
    assert_eq!(counts(t).await, (0, 0, 0));

    let client2 = client.clone();
    after_commit(&client, |outer| async move {
        SendConfirmationEmail::perform_later(&outer, 1).await?;
        // The inner scope may even be given the plain client: it still stages into the outer one.
        let inner_failed: Result<(), AppError> = after_commit(&client2, |inner| async move {
            NotifySecurityTeam::perform_later(&inner, 2).await?;
            Err(AppError::Rejected("savepoint rolled back"))
        })
        .await;
        assert_eq!(inner_failed.unwrap_err().to_string(), "savepoint rolled back");
        after_commit(&client2, |inner| async move {
            NotifySecurityTeam::perform_later(&inner, 3).await?;
            Ok::<_, AppError>(())
        })
        .await?;
        assert_eq!(counts(t).await, (0, 0, 0));
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    one_mail_and_the_critical_job_of_user_3(t).await;
}

/// A savepoint's rollback drops what was enqueued while it ran, even through
/// the outer scope's handle (a service that kept it); a `Staged` made inside
/// the nested scope still answers to its own flush.
async fn what_a_nested_scope_enqueues_through_the_outer_handle_rolls_back_with_it(t: &TestBackend) {
    let client = t.client();
    after_commit(&client, |outer| async move {
        SendConfirmationEmail::perform_later(&outer, 1).await?;
        let service = outer.clone();
        let plain = outer.clone();
        let inner_failed: Result<(), AppError> = after_commit(&outer, |_inner| async move {
            NotifySecurityTeam::perform_later(&service, 2).await?;
            Err(AppError::Rejected("savepoint rolled back"))
        })
        .await;
        assert!(inner_failed.is_err());
        let inner_committed: Result<usize, AppError> = after_commit(&outer, |_inner| async move {
            NotifySecurityTeam::perform_later(&plain, 3).await?;
            // A `Staged` of the nested scope's own, discarded: its job goes nowhere.
            let own = Staged::new(&plain);
            NotifySecurityTeam::perform_later(&own, 4).await?;
            Ok(own.discard())
        })
        .await;
        assert_eq!(inner_committed.unwrap(), 1);
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    one_mail_and_the_critical_job_of_user_3(t).await;
}

/// Two levels down, an enqueue through the outermost handle still lands in
/// the innermost scope running: it rolls back with that scope, or with any
/// scope between it and the outermost.
async fn a_scope_two_levels_down_rolls_back_what_the_outer_handle_enqueued(t: &TestBackend) {
    let client = t.client();
    after_commit(&client, |outer| async move {
        SendConfirmationEmail::perform_later(&outer, 1).await?;
        let service = outer.clone();
        let middle_failed: Result<(), AppError> = after_commit(&outer, |middle| async move {
            after_commit(&middle, |_inner| async move {
                NotifySecurityTeam::perform_later(&service, 2).await?;
                Ok::<_, AppError>(())
            })
            .await?;
            Err(AppError::Rejected("the middle savepoint rolled back"))
        })
        .await;
        assert!(middle_failed.is_err());
        let service = outer.clone();
        after_commit(&outer, |middle| async move {
            let kept = service.clone();
            let inner_failed: Result<(), AppError> = after_commit(&middle, |_inner| async move {
                NotifySecurityTeam::perform_later(&service, 4).await?;
                Err(AppError::Rejected("the inner savepoint rolled back"))
            })
            .await;
            assert!(inner_failed.is_err());
            after_commit(&middle, |_inner| async move {
                NotifySecurityTeam::perform_later(&kept, 3).await?;
                Ok::<_, AppError>(())
            })
            .await
        })
        .await?;
        assert_eq!(counts(t).await, (0, 0, 0));
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    one_mail_and_the_critical_job_of_user_3(t).await;
}

async fn staged_flushes_after_commit_and_discards_on_drop(t: &TestBackend) {
    let client = t.client();
    let staged = Staged::new(&client);
    SendConfirmationEmail::perform_later(&staged, 1).await.unwrap();
    NotifySecurityTeam::perform_later(staged.client(), 1).await.unwrap();
    assert_eq!((staged.len(), counts(t).await), (2, (0, 0, 0)));
    let ids = staged.flush().await.unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(counts(t).await, (1, 1, 0));

    let dropped = Staged::new(&client);
    SendConfirmationEmail::perform_later(&dropped, 2).await.unwrap();
    drop(dropped);
    let discarded = Staged::new(&client);
    SendConfirmationEmail::perform_later(&discarded, 3).await.unwrap();
    assert_eq!(discarded.discard(), 1);
    assert_eq!(counts(t).await, (1, 1, 0));
}

async fn a_handle_used_after_its_scope_ended_is_refused(t: &TestBackend) {
    let client = t.client();
    let kept = after_commit(&client, |jobs| async move { Ok::<_, AppError>(jobs.clone()) }).await.unwrap();
    let late = SendConfirmationEmail::perform_later(&kept, 1).await.unwrap_err();
    assert!(matches!(late, EnqueueError::ScopeEnded { .. }), "{late:?}");
    assert!(late.to_string().contains("whose scope already ended"), "{late}");
    assert_eq!(counts(t).await, (0, 0, 0));
}

async fn a_staged_flush_inside_a_scope_waits_for_the_scope(t: &TestBackend) {
    let client = t.client();
    let plain = client.clone();
    let rolled_back: Result<(), AppError> = after_commit(&client, |_jobs| async move {
        // Code inside the scope that stages on its own, from the plain client.
        let staged = Staged::new(&plain);
        SendConfirmationEmail::perform_later(&staged, 1).await?;
        assert_eq!(staged.flush().await.map_err(AppError::Flush)?.len(), 1);
        assert_eq!(counts(t).await, (0, 0, 0), "flushed into the scope, not to the backend");
        Err(AppError::Rejected("rolled back"))
    })
    .await;
    assert!(rolled_back.is_err());
    assert_eq!(counts(t).await, (0, 0, 0));
}

// Redis only: a flush while Redis is down fails with every job handed back,
// and one flush is one atomic script call.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_fails_returns_the_staged_jobs_to_retry() {
    let mut t = TestBackend::redis().await;
    let client = t.client();
    let staged = Staged::new(&client);
    for user_id in 1..=3 {
        SendConfirmationEmail::perform_later(&staged, user_id).await.unwrap();
    }
    t.server_mut().unwrap().kill();
    let failed = staged.flush().await.unwrap_err();
    assert_eq!(failed.staged.len(), 3);
    assert!(matches!(failed.source, EnqueueError::Backend { .. }), "{failed}");
    assert!(
        failed.to_string().starts_with("3 staged jobs were not enqueued: job `send_confirmation_email`:"),
        "{failed}"
    );

    t.server_mut().unwrap().restart();
    let mut retry = failed.staged;
    let mut attempts = 0;
    let ids = loop {
        // The pool reconnects on the next command; a reconnect may take a try or two.
        match retry.flush().await {
            Ok(ids) => break ids,
            Err(again) => {
                attempts += 1;
                assert!(attempts < 200, "Redis is back, yet the flush still fails: {again}");
                assert_eq!(again.staged.len(), 3);
                retry = again.staged;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(ids.len(), 3);
    assert_eq!(t.backend().count(&JobSet::Queue("mail".into())).await.unwrap(), 3);
}

/// The jobs of a committed scope whose push failed are handed back in the
/// `FlushError`; a caller that drops it (an `?` in a handler) loses them,
/// and that is logged as an error, never dropped silently.
#[tokio::test(flavor = "current_thread")]
async fn dropping_the_jobs_of_a_failed_flush_is_logged_as_an_error() {
    let (logs, _guard) = jobs_tests::Logs::capture();
    let mut t = TestBackend::redis().await;
    let staged = Staged::new(&t.client());
    let jid = SendConfirmationEmail::perform_later(&staged, 1).await.unwrap();
    t.server_mut().unwrap().kill();
    let failed = staged.flush().await.unwrap_err();
    // What the error holds can be recorded, to be pushed later.
    let jobs = failed.staged.jobs();
    assert_eq!(jobs.iter().map(|job| &job.jid).collect::<Vec<_>>(), [&jid]);
    assert!(jobs[0].payload.contains("send_confirmation_email"), "{}", jobs[0].payload);
    drop(failed);
    let text = logs.text();
    assert!(text.contains("ERROR") && text.contains("were never enqueued"), "{text}");
    assert!(text.contains(jid.as_str()), "the log names the ids: {text}");
    // Discarding on purpose is not an error.
    let staged = Staged::new(&t.client());
    SendConfirmationEmail::perform_later(&staged, 2).await.unwrap();
    staged.discard();
    let text = logs.text();
    assert_eq!(text.matches("ERROR").count(), 1, "{text}");
}

/// A scope dropped midway (a web framework cancels the request of a client
/// that went away) may have committed its transaction: its discarded jobs
/// are then lost, and that is logged as a warning with the fix, not at debug.
#[tokio::test(flavor = "current_thread")]
async fn a_scope_dropped_midway_warns_that_its_jobs_may_be_lost() {
    let (logs, _guard) = jobs_tests::Logs::capture();
    let t = TestBackend::memory();
    let client = t.client();
    let (staged_tx, staged_rx) = oneshot::channel::<()>();
    let scope = after_commit(&client, |jobs| async move {
        SendConfirmationEmail::perform_later(&jobs, 1).await?;
        let _ = staged_tx.send(());
        // The COMMIT, waiting on a lock, when the request is cancelled.
        std::future::pending::<()>().await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    tokio::select! {
        _ = scope => panic!("the scope never ends"),
        _ = staged_rx => {} // the request is cancelled: the scope's future is dropped
    }
    let text = logs.text();
    assert!(text.contains("WARN") && text.contains("an after_commit scope was dropped before it finished"), "{text}");
    assert!(text.contains("send_confirmation_email") && text.contains("tokio::spawn"), "{text}");
    assert_eq!(t.backend().count(&JobSet::Queue("mail".into())).await.unwrap(), 0);
    // A scope that fails, and one that commits, say nothing of the kind.
    let failed = after_commit(&client, |jobs| async move {
        SendConfirmationEmail::perform_later(&jobs, 2).await?;
        Err::<(), Box<dyn std::error::Error + Send + Sync>>("rolled back".into())
    });
    assert!(failed.await.is_err());
    after_commit(&client, |jobs| async move {
        SendConfirmationEmail::perform_later(&jobs, 3).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await
    .unwrap();
    assert_eq!(logs.text().matches("WARN").count(), 1, "{}", logs.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_reaches_redis_in_one_script_call() {
    let t = TestBackend::redis().await;
    let client = t.client();
    let server = t.server().unwrap();
    let calls = || {
        let stats = server.command(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = calls();
    after_commit(&client, |jobs| async move {
        for user_id in 0..20 {
            SendConfirmationEmail::perform_later(&jobs, user_id).await?;
            NotifySecurityTeam::perform_later(&jobs, user_id).await?;
        }
        Ok::<_, AppError>(())
    })
    .await
    .unwrap();
    assert_eq!(calls() - before, 1, "all 40 jobs in one atomic push");
    assert_eq!(counts(&t).await, (20, 20, 0));
}
