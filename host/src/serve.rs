//! `tablehost serve`: a worker whose agents come from the registry, and
//! the admin API that changes them.
//!
//! The supervisor loop follows the registry topic and keeps the worker in
//! line with it:
//!
//! - a deployment whose sources, outputs, tables and WASI grants stay the
//!   same is a hot swap. The new version is compiled here, off the
//!   worker's thread, and the worker swaps it in between two batches with
//!   every table partition left open;
//! - a new agent, a removed one, or a changed shape restarts the worker:
//!   it commits, leaves the group and starts again with the new set;
//! - a rollback the worker made on its own (a version that failed to start
//!   or trapped too often on probation) is written back to the registry,
//!   so every process of the application returns to the same version.
//!
//! Agents of the config file's `[[agents]]` run next to the deployed ones.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::agent::{AgentNotice, AgentRuntime, AgentVersion, Stats, VersionStats};
use crate::config::{AdminConfig, Config};
use crate::control::{Command, Control};
use crate::kafka::{Kafka, TopicKind};
use crate::registry::log::RegistryLog;
use crate::registry::{self, DeploymentRecord, Entry, Registry, VersionRecord};
use crate::worker::{self, RunOptions, RunSummary, Shutdown};

/// How often the supervisor reads the registry.
const TICK: Duration = Duration::from_millis(200);
/// How long a failed worker waits before it starts again.
const RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long a process waits for an uploaded component's bytes.
const BLOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a version can be deployed in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionStatus {
    /// Being compiled in the background.
    Compiling,
    /// Compiled and linked.
    Ready,
    /// Compiling or linking failed, for the reason in the message.
    Failed(String),
}

impl std::fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionStatus::Compiling => f.write_str("compiling"),
            VersionStatus::Ready => f.write_str("ready"),
            VersionStatus::Failed(error) => write!(f, "failed: {error}"),
        }
    }
}

type VersionKey = (String, String, u32);

/// The state the admin API and the supervisor share.
pub struct Platform {
    pub(crate) admin_token_sha256: Option<String>,
    pub(crate) max_component_bytes: u64,
    registry: Mutex<Registry>,
    log: Mutex<RegistryLog>,
    runtime: Arc<AgentRuntime>,
    stats: Stats,
    statuses: Arc<Mutex<HashMap<VersionKey, VersionStatus>>>,
    prepared: Arc<Mutex<HashMap<VersionKey, Arc<AgentVersion>>>>,
    pauses: Mutex<Vec<Duration>>,
    changes: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Platform {
    /// Returns the registry as this process last read it.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// Writes `entries` to the registry topic and applies them here.
    ///
    /// # Errors
    ///
    /// Fails when the cluster does not acknowledge them.
    pub fn write(&self, entries: Vec<Entry>) -> anyhow::Result<()> {
        lock(&self.log).write(&entries)?;
        // The entries apply when they are read back, so this process applies
        // every entry in the topic's order, its own ones included.
        self.catch_up()?;
        Ok(())
    }

    /// Serializes the changes that read the registry and then write it,
    /// such as numbering a new version.
    pub(crate) fn change_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.changes)
    }

    /// Stores uploaded bytes and returns their digest.
    ///
    /// # Errors
    ///
    /// Fails when they cannot be stored.
    pub fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<String> {
        lock(&self.log).put_blob(bytes)
    }

    /// Returns the largest request body the admin API accepts: a component
    /// of the maximum size in base64, plus room for the manifest.
    pub fn max_request_bytes(&self) -> usize {
        (self.max_component_bytes as usize / 3 + 1) * 4 + 1024 * 1024
    }

    /// Returns the status of a version in this process, starting its
    /// compilation when this process has not seen it yet.
    pub fn status(&self, tenant: &str, agent: &str, number: u32) -> VersionStatus {
        let key = (tenant.to_owned(), agent.to_owned(), number);
        if let Some(status) = lock(&self.statuses).get(&key) {
            return status.clone();
        }
        let record = self.registry().versions.get(&key).cloned();
        match record {
            Some(record) => match lock(&self.log).blob(&record.sha256, Duration::ZERO) {
                Ok(bytes) => {
                    self.compile_in_background(&record, bytes);
                    VersionStatus::Compiling
                }
                Err(error) => VersionStatus::Failed(format!("{error:#}")),
            },
            None => VersionStatus::Failed("no such version".into()),
        }
    }

    /// Returns the counters of a tenant's agent at version `label`.
    pub fn stats(&self, tenant: &str, agent: &str, label: &str) -> VersionStats {
        self.stats.get(&registry::namespaced(tenant, agent), label)
    }

    /// Returns the counters of all of `tenant`'s agents and versions added
    /// up, as this process has counted them.
    pub fn tenant_stats(&self, tenant: &str) -> VersionStats {
        let prefix = registry::namespaced(tenant, "");
        self.stats.sum(|agent| agent.starts_with(&prefix))
    }

    /// Returns the pause of every swap that took effect in this process.
    pub fn swap_pauses(&self) -> Vec<Duration> {
        lock(&self.pauses).clone()
    }

    /// Compiles and links a version on a thread of its own, so a large
    /// component (tens of seconds for a JavaScript one) holds up nothing;
    /// the compiled artifact is cached on disk.
    pub fn compile_in_background(&self, record: &VersionRecord, bytes: Vec<u8>) {
        let key = (record.tenant.clone(), record.agent.clone(), record.number);
        lock(&self.statuses).insert(key.clone(), VersionStatus::Compiling);
        let (runtime, statuses, prepared) = (
            self.runtime.clone(),
            self.statuses.clone(),
            self.prepared.clone(),
        );
        let name = registry::namespaced(&record.tenant, &record.agent);
        let label = record.label();
        let spawned = std::thread::Builder::new()
            .name("tablehost-compile".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let status = match runtime.prepare(&name, &label, &bytes) {
                    Ok(version) => {
                        tracing::info!(agent = %name, version = %label, seconds = started.elapsed().as_secs_f64(), "serve: version compiled and linked");
                        lock(&prepared).insert(key.clone(), version);
                        VersionStatus::Ready
                    }
                    Err(error) => {
                        let error = format!("{error:#}");
                        tracing::error!(agent = %name, version = %label, %error, "serve: version cannot run");
                        VersionStatus::Failed(error)
                    }
                };
                lock(&statuses).insert(key, status);
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "serve: cannot start a compile thread");
        }
    }

    /// Returns the prepared version of `record`, compiling it here when no
    /// background compile has finished it.
    fn prepare(&self, record: &VersionRecord) -> anyhow::Result<Arc<AgentVersion>> {
        let key = (record.tenant.clone(), record.agent.clone(), record.number);
        if let Some(version) = lock(&self.prepared).get(&key) {
            return Ok(version.clone());
        }
        let bytes = lock(&self.log).blob(&record.sha256, BLOB_TIMEOUT)?;
        let name = registry::namespaced(&record.tenant, &record.agent);
        let version = self.runtime.prepare(&name, &record.label(), &bytes);
        let status = match &version {
            Ok(version) => {
                lock(&self.prepared).insert(key.clone(), version.clone());
                VersionStatus::Ready
            }
            Err(error) => VersionStatus::Failed(format!("{error:#}")),
        };
        lock(&self.statuses).insert(key, status);
        version
    }

    /// Applies the entries written since the last call. The log stays
    /// locked until they are applied, so two callers apply in topic order.
    fn catch_up(&self) -> anyhow::Result<usize> {
        let mut log = lock(&self.log);
        let entries = log.read_new()?;
        let applied = entries.len();
        let mut registry = self.registry();
        for entry in entries {
            registry.apply(entry);
        }
        drop(registry);
        drop(log);
        Ok(applied)
    }
}

/// Options of `tablehost serve`.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// The administrator's token, overriding `admin.token_sha256`.
    pub admin_token: Option<String>,
    /// Called with the admin API's address once it listens.
    pub on_listen: Option<Arc<dyn Fn(SocketAddr) + Send + Sync>>,
    /// The platform, handed out once it exists, for callers that inspect it.
    pub on_platform: Option<Arc<dyn Fn(Arc<Platform>) + Send + Sync>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is never printed.
        f.debug_struct("ServeOptions")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// A deployed agent as the registry describes it.
struct Desired {
    name: String,
    version: VersionRecord,
    agent: crate::config::AgentConfig,
    tables: Vec<crate::config::TableConfig>,
    shape: String,
}

/// The worker thread and what it runs.
struct RunningWorker {
    shutdown: Arc<Shutdown>,
    thread: std::thread::JoinHandle<anyhow::Result<RunSummary>>,
    /// Deployed agents by name: their shape and version number.
    agents: BTreeMap<String, (String, u32)>,
    /// Swaps to the worker and its notices.
    control: Arc<Control>,
}

impl RunningWorker {
    /// Returns whether `wanted` differs from what runs in anything but
    /// versions: an agent added or removed, or a shape changed.
    fn shape_differs(&self, wanted: &[Desired]) -> bool {
        self.agents.len() != wanted.len()
            || wanted.iter().any(|d| {
                self.agents
                    .get(&d.name)
                    .is_none_or(|(shape, _)| *shape != d.shape)
            })
    }
}

/// Runs the admin API and a worker whose agents follow the registry, until
/// `shutdown` is requested.
///
/// # Errors
///
/// Fails when the registry cannot be read, the admin API cannot listen, or
/// the worker fails.
pub fn serve(
    config: &Config,
    kafka: Arc<Kafka>,
    shutdown: Arc<Shutdown>,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let admin = config.admin.clone().unwrap_or_default();
    let admin_token_sha256 = match &options.admin_token {
        Some(token) => Some(registry::sha256_hex(token.trim().as_bytes())),
        None => admin.token_sha256.clone(),
    };
    if admin_token_sha256.is_none() {
        bail!("serve: no admin token; set TABLEHOST_ADMIN_TOKEN, or admin.token_sha256 in the config (the SHA-256 of the token, hex)");
    }
    let state_dir = config.state_dir();
    let runtime = Arc::new(AgentRuntime::new(&state_dir.join("compiled"))?);
    let mut log = RegistryLog::open(kafka.clone(), &config.app_id, &state_dir)?;
    let mut registry = Registry::default();
    let entries = log.read_new()?;
    let applied = entries.len();
    for entry in entries {
        registry.apply(entry);
    }
    tracing::info!(
        topic = log.topic(),
        records = applied,
        tenants = registry.tenants.len(),
        deployed = registry.deployments.len(),
        "serve: registry read"
    );
    let platform = Arc::new(Platform {
        admin_token_sha256,
        max_component_bytes: admin.max_component_mib * 1024 * 1024,
        registry: Mutex::new(registry),
        log: Mutex::new(log),
        runtime,
        stats: Stats::default(),
        statuses: Default::default(),
        prepared: Default::default(),
        pauses: Default::default(),
        changes: Mutex::new(()),
    });
    if let Some(callback) = &options.on_platform {
        callback(platform.clone());
    }

    let api = start_api(&admin, platform.clone(), options.on_listen.clone())?;
    let result = supervise(config, &kafka, &platform, &shutdown, &admin);
    api.stop();
    result
}

/// The admin API's thread and the way to stop it.
struct Api {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start_api(
    admin: &AdminConfig,
    platform: Arc<Platform>,
    on_listen: Option<Arc<dyn Fn(SocketAddr) + Send + Sync>>,
) -> anyhow::Result<Api> {
    let listener = std::net::TcpListener::bind(&admin.listen).with_context(|| {
        format!(
            "serve: the admin API cannot listen on {}; is another process using it? Set admin.listen",
            admin.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    if let Some(callback) = on_listen {
        callback(address);
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tablehost-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "admin: cannot start the async runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "admin: cannot use the listening socket");
                        return;
                    }
                };
                let stop = async move {
                    let _ = stop_rx.await;
                };
                if let Err(error) = crate::admin::serve(platform, listener, stop).await {
                    tracing::error!(error = %format!("{error:#}"), "admin: server failed");
                }
            });
        })
        .context("serve: cannot start the admin thread")?;
    Ok(Api {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Returns the deployed agents the registry describes.
fn desired(platform: &Platform) -> Vec<Desired> {
    let registry = platform.registry();
    registry
        .deployed()
        .into_iter()
        .map(|(tenant, version)| {
            let (agent, tables) = registry::agent_config(tenant, &version.manifest);
            Desired {
                name: agent.name.clone(),
                shape: registry::shape(&agent, &tables),
                version: version.clone(),
                agent,
                tables,
            }
        })
        .collect()
}

fn supervise(
    config: &Config,
    kafka: &Arc<Kafka>,
    platform: &Arc<Platform>,
    shutdown: &Arc<Shutdown>,
    admin: &AdminConfig,
) -> anyhow::Result<()> {
    // One worker per tenant, keyed by tenant name; the config file's own
    // agents run in the worker keyed "".
    let mut workers: BTreeMap<String, RunningWorker> = BTreeMap::new();
    // Versions that failed to prepare, so they are not tried every tick.
    let mut broken: BTreeMap<String, u32> = BTreeMap::new();
    // When a failed tenant worker may start again.
    let mut retry_at: BTreeMap<String, std::time::Instant> = BTreeMap::new();
    while !shutdown.is_requested() {
        if let Err(error) = platform.catch_up() {
            tracing::warn!(error = %format!("{error:#}"), "serve: cannot read the registry; retrying");
            std::thread::sleep(RETRY_DELAY);
            continue;
        }
        let mut by_tenant: BTreeMap<String, Vec<Desired>> = BTreeMap::new();
        if !config.agents.is_empty() {
            by_tenant.entry(String::new()).or_default();
        }
        for desired in desired(platform) {
            if broken.get(&desired.name) != Some(&desired.version.number) {
                by_tenant
                    .entry(desired.version.tenant.clone())
                    .or_default()
                    .push(desired);
            }
        }
        let gone: Vec<String> = workers
            .keys()
            .filter(|tenant| !by_tenant.contains_key(*tenant))
            .cloned()
            .collect();
        for tenant in gone {
            if let Some(running) = workers.remove(&tenant) {
                stop_worker(&tenant, running);
            }
        }
        for (tenant, wanted) in by_tenant {
            if retry_at
                .get(&tenant)
                .is_some_and(|at| std::time::Instant::now() < *at)
            {
                continue;
            }
            let restart = match workers.get(&tenant) {
                None => true,
                Some(running) => running.thread.is_finished() || running.shape_differs(&wanted),
            };
            if restart {
                if let Some(running) = workers.remove(&tenant) {
                    if !stop_worker(&tenant, running) {
                        // A worker that failed waits a little before the next try.
                        retry_at.insert(tenant.clone(), std::time::Instant::now() + RETRY_DELAY);
                        continue;
                    }
                }
                retry_at.remove(&tenant);
                if let Some(started) =
                    start_worker(config, kafka, platform, admin, &tenant, wanted, &mut broken)?
                {
                    workers.insert(tenant, started);
                }
            } else if let Some(running) = workers.get_mut(&tenant) {
                swap_changed(platform, running, &wanted)?;
            }
        }
        for running in workers.values_mut() {
            for notice in running.control.take_notices() {
                match notice {
                    AgentNotice::Swapped { pause, .. } => lock(&platform.pauses).push(pause),
                    AgentNotice::RolledBack {
                        agent,
                        from,
                        to,
                        reason,
                    } => {
                        let (Some(from), Some(to)) = (label_number(&from), label_number(&to))
                        else {
                            continue;
                        };
                        if let Some((_, number)) = running.agents.get_mut(&agent) {
                            *number = to;
                        }
                        revert(
                            platform,
                            &agent,
                            from,
                            to,
                            &format!("rolled back automatically: {reason}"),
                        )?;
                    }
                }
            }
        }
        std::thread::sleep(TICK);
    }
    for (tenant, running) in std::mem::take(&mut workers) {
        stop_worker(&tenant, running);
    }
    Ok(())
}

/// Sends a swap to `running` for each agent whose deployed version changed.
fn swap_changed(
    platform: &Platform,
    running: &mut RunningWorker,
    wanted: &[Desired],
) -> anyhow::Result<()> {
    for desired in wanted {
        let Some((_, number)) = running.agents.get_mut(&desired.name) else {
            continue;
        };
        if *number == desired.version.number {
            continue;
        }
        match platform.prepare(&desired.version) {
            Ok(version) => {
                tracing::info!(agent = %desired.name, from = *number, to = desired.version.number, "serve: swapping versions");
                running.control.send(Command::Swap {
                    agent: desired.name.clone(),
                    version,
                    rollout: desired.agent.rollout,
                    limits: desired.agent.limits.clone(),
                });
                *number = desired.version.number;
            }
            Err(error) => {
                let error = format!("{error:#}");
                tracing::error!(agent = %desired.name, version = desired.version.number, %error, "serve: new version cannot run; rolling the deployment back");
                revert(
                    platform,
                    &desired.name,
                    desired.version.number,
                    *number,
                    &format!("version cannot run: {error}"),
                )?;
            }
        }
    }
    Ok(())
}

fn label_number(label: &str) -> Option<u32> {
    label.strip_prefix('v')?.parse().ok()
}

/// Records in the registry that agent `name` went back from version `from`
/// to `to`, unless the deployment has moved on since.
fn revert(platform: &Platform, name: &str, from: u32, to: u32, reason: &str) -> anyhow::Result<()> {
    let Some((tenant, agent)) = name.split_once('.') else {
        return Ok(());
    };
    let key = (tenant.to_owned(), agent.to_owned());
    let _change = platform.change_lock();
    let Some(current) = platform.registry().deployments.get(&key).cloned() else {
        return Ok(());
    };
    if current.version != from {
        return Ok(());
    }
    let mut history = current.history.clone();
    history.retain(|&n| n != to);
    let record = DeploymentRecord {
        version: to,
        history,
        reason: reason.to_owned(),
        changed_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default(),
        ..current
    };
    tracing::warn!(agent = %name, from, to, reason, "serve: deployment rolled back");
    platform.write(vec![Entry::Deployment(key, Some(record))])
}

/// Stops a worker and returns whether its run ended without an error;
/// an error is logged, as one tenant's failure must not stop the host.
fn stop_worker(tenant: &str, running: RunningWorker) -> bool {
    running.shutdown.request();
    match running.thread.join() {
        Ok(Ok(summary)) => {
            tracing::info!(tenant, events = summary.events, "serve: worker stopped");
            true
        }
        Ok(Err(error)) => {
            tracing::error!(tenant, error = %format!("{error:#}"), "serve: worker failed; starting it again shortly");
            false
        }
        Err(_) => {
            tracing::error!(tenant, "serve: worker panicked; starting it again shortly");
            false
        }
    }
}

fn start_worker(
    config: &Config,
    kafka: &Arc<Kafka>,
    platform: &Arc<Platform>,
    admin: &AdminConfig,
    tenant_name: &str,
    wanted: Vec<Desired>,
    broken: &mut BTreeMap<String, u32>,
) -> anyhow::Result<Option<RunningWorker>> {
    let mut effective = config.clone();
    if !tenant_name.is_empty() {
        // A tenant's worker runs only the tenant's agents and tables.
        effective.agents.clear();
        effective.tables.clear();
    }
    let mut prepared = HashMap::new();
    let mut agents = BTreeMap::new();
    for desired in wanted {
        let tenant = platform
            .registry()
            .tenants
            .get(&desired.version.tenant)
            .cloned();
        let runnable = match &tenant {
            Some(tenant) => registry::check_runnable(&desired.version.manifest, tenant),
            None => Err("the tenant is gone".into()),
        };
        let version = runnable
            .map_err(|m| anyhow!("manifest: {m}"))
            .and_then(|()| platform.prepare(&desired.version))
            .and_then(|version| {
                // A missing source topic of the tenant is created; an
                // existing one keeps its partition count.
                for source in &desired.agent.sources {
                    if kafka.partition_count(source)?.is_none() {
                        kafka.ensure_topic(source, admin.default_partitions, TopicKind::Plain)?;
                    }
                }
                Ok(version)
            });
        match version {
            Ok(version) => {
                prepared.insert(desired.name.clone(), version);
                agents.insert(
                    desired.name.clone(),
                    (desired.shape, desired.version.number),
                );
                effective.agents.push(desired.agent);
                effective.tables.extend(desired.tables);
            }
            Err(error) => {
                tracing::error!(agent = %desired.name, version = desired.version.number, error = %format!("{error:#}"), "serve: deployed version cannot run; the agent stays stopped");
                broken.insert(desired.name, desired.version.number);
            }
        }
    }
    if effective.agents.is_empty() {
        tracing::info!("serve: no agent is deployed; waiting for a deployment");
        return Ok(None);
    }
    tracing::info!(tenant = tenant_name, agents = ?effective.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), "serve: starting a worker");
    let shutdown = Arc::new(Shutdown::default());
    let control = Control::with_stats(platform.stats.clone());
    let options = RunOptions {
        control: Some(control.clone()),
        // Each tenant's worker is a consumer group of its own, so one
        // tenant's deployments never rebalance another's partitions.
        group_id: (!tenant_name.is_empty()).then(|| format!("{}.{tenant_name}", config.app_id)),
        runtime: Some(platform.runtime.clone()),
        prepared: Some(prepared),
        ..Default::default()
    };
    let thread = {
        let (kafka, shutdown) = (kafka.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("tablehost-worker".into())
            .spawn(move || worker::run(&effective, kafka, shutdown, options))
            .context("serve: cannot start the worker thread")?
    };
    Ok(Some(RunningWorker {
        shutdown,
        thread,
        agents,
        control,
    }))
}
