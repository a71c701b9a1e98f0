//! The agent's long-running tasks, never gone without a word: a source or
//! server that returns, fails or panics is logged and restarted with
//! backoff; the end of an essential one (the state owner, the API server,
//! the event relay) ends the agent with an error, so its supervisor
//! (systemd, the kubelet) restarts it while the pinned programs forward.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::anyhow;
use tokio::{sync::mpsc, task::JoinError};
use tracing::error;

/// The first wait before a restart; it doubles up to `LONGEST_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const LONGEST_BACKOFF: Duration = Duration::from_secs(60);
/// A task that ran this long before it ended starts again from the first wait.
const STABLE: Duration = Duration::from_secs(60);

pub struct Supervisor {
    ended: mpsc::UnboundedSender<anyhow::Error>,
    endings: mpsc::UnboundedReceiver<anyhow::Error>,
}

/// How a task ended, in words.
fn ending(outcome: Result<anyhow::Result<()>, JoinError>) -> String {
    match outcome {
        Ok(Ok(())) => "returned".into(),
        Ok(Err(error)) => format!("failed: {error:#}"),
        Err(join) if join.is_panic() => {
            let panic = join.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            format!("panicked: {message}")
        }
        Err(_) => "was cancelled".into(),
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let (ended, endings) = mpsc::unbounded_channel();
        Self { ended, endings }
    }

    /// Runs the task `make` makes, and a new one each time it ends, after a
    /// wait that doubles while it keeps ending soon.
    pub fn restarting<F, T>(&self, name: &'static str, mut make: F)
    where
        F: FnMut() -> T + Send + 'static,
        T: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        tokio::spawn(async move {
            let mut wait = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                let why = ending(tokio::spawn(make()).await);
                if started.elapsed() > STABLE {
                    wait = FIRST_BACKOFF;
                }
                error!(task = name, "{why}; restarting it in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(LONGEST_BACKOFF);
            }
        });
    }

    /// Runs `task`; its end, whatever it is, ends the agent.
    pub fn essential<T>(&self, name: &'static str, task: T)
    where
        T: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let ended = self.ended.clone();
        tokio::spawn(async move {
            let why = ending(tokio::spawn(task).await);
            let _ = ended.send(anyhow!("the {name} {why}"));
        });
    }

    /// Waits for an essential task to end; why it did.
    pub async fn ended(&mut self) -> anyhow::Error {
        match self.endings.recv().await {
            Some(error) => error,
            // Unreachable while `self` holds a sender.
            None => anyhow!("the supervisor stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_fails_or_panics_is_started_again_with_growing_waits() {
        let supervisor = Supervisor::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let started = tokio::time::Instant::now();
        supervisor.restarting("flaky source", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match run {
                    0 => anyhow::bail!("the watch broke"),
                    1 => panic!("a bug"),
                    _ => std::future::pending().await,
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        // 1 s after the failure, 2 s after the panic.
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_end_of_an_essential_task_ends_the_agent_with_why() {
        let mut supervisor = Supervisor::new();
        supervisor.essential("API server", async { anyhow::bail!("socket gone") });
        let why = supervisor.ended().await;
        assert_eq!(why.to_string(), "the API server failed: socket gone");
        supervisor.essential("state owner", async { panic!("invariant broken") });
        let why = supervisor.ended().await;
        assert_eq!(
            why.to_string(),
            "the state owner panicked: invariant broken"
        );
    }
}
