//! The channel between a running worker and the code that deploys agents.
//!
//! The worker owns its agents on its own thread. Deployments reach it as
//! [`Command`]s in a [`Control`]; the worker takes them between two
//! batches, so a swap never splits a batch, and it hands back what its
//! agents did on their own (swaps that took effect, rollbacks) as
//! [`AgentNotice`]s. The per-version counters live in the same place so
//! the admin API can read them while the worker runs.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::agent::{AgentNotice, AgentVersion, Stats};
use crate::config::{Limits, Rollout};

/// A request to a running worker.
pub enum Command {
    /// Put `version` in place of agent `agent`'s current version. The
    /// agent's tables, topics and partitions stay as they are.
    Swap {
        /// The agent's name.
        agent: String,
        /// The prepared version; it must come from the worker's runtime.
        version: Arc<AgentVersion>,
        /// The probation settings of the new version.
        rollout: Rollout,
        /// The new limits of the agent's instances.
        limits: Limits,
    },
}

/// Commands to a worker, notices from it, and its agents' counters.
#[derive(Default)]
pub struct Control {
    commands: Mutex<Vec<Command>>,
    notices: Mutex<Vec<AgentNotice>>,
    arrived: Condvar,
    /// Counters per agent and version.
    pub stats: Stats,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("commands", &lock(&self.commands).len())
            .field("notices", &lock(&self.notices).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// Creates an empty control.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Creates an empty control whose agents count into `stats`, which
    /// several controls may share.
    pub fn with_stats(stats: Stats) -> Arc<Self> {
        Arc::new(Self {
            stats,
            ..Default::default()
        })
    }

    /// Queues `command` for the worker's next pause between batches.
    pub fn send(&self, command: Command) {
        lock(&self.commands).push(command);
    }

    /// Takes the queued commands; called by the worker.
    pub(crate) fn take_commands(&self) -> Vec<Command> {
        std::mem::take(&mut *lock(&self.commands))
    }

    /// Records notices; called by the worker.
    pub(crate) fn report(&self, notices: Vec<AgentNotice>) {
        if notices.is_empty() {
            return;
        }
        lock(&self.notices).extend(notices);
        self.arrived.notify_all();
    }

    /// Takes the notices recorded so far.
    pub fn take_notices(&self) -> Vec<AgentNotice> {
        std::mem::take(&mut *lock(&self.notices))
    }

    /// Waits up to `timeout` for at least one notice and takes them all.
    pub fn wait_notices(&self, timeout: Duration) -> Vec<AgentNotice> {
        let deadline = Instant::now() + timeout;
        let mut notices = lock(&self.notices);
        while notices.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            notices = self
                .arrived
                .wait_timeout(notices, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::take(&mut *notices)
    }
}
