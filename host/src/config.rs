//! The application config: one TOML file, parsed with serde and validated
//! before anything starts.
//!
//! Every check names the key that is wrong and the fix, so a bad config
//! fails at start with one clear message instead of halfway through a run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::RocksOptions;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The application id: the Kafka consumer group and the prefix of every
    /// topic the host creates.
    pub app_id: String,
    /// Bootstrap servers of a real Kafka cluster, such as `127.0.0.1:9092`.
    /// When absent the host starts an embedded in-process cluster.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Directory for table state and the compiled-component cache. Default
    /// `.tablehost/<app_id>` under the working directory.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Milliseconds between commits. Default 1000.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Maximum number of events handed to an agent in one call. Default 512.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// librdkafka properties passed unchanged to every client, such as
    /// `"security.protocol" = "ssl"`.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    /// Topics to create when missing, with their partition counts.
    #[serde(default)]
    pub topics: Vec<TopicConfig>,
    /// The agents this application runs.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// The tables agents may open.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Recovery settings for unusual changelogs.
    #[serde(default)]
    pub recovery: RecoveryConfig,
    /// How many partitions following each of its own a worker keeps warm
    /// copies of, by following their changelogs, so that taking one over
    /// replays only the tail. Default 0. Any value above 0 selects the
    /// round-robin assignor unless `[kafka]` sets one.
    #[serde(default)]
    pub standby_replicas: u32,
    /// The `[admin]` section: with it, `tablehost serve` accepts agents
    /// uploaded through the admin API, and `[[agents]]` may be empty.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
}

/// The `[admin]` section: the admin API of `tablehost serve`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The address the API listens on. Default `127.0.0.1:7070`.
    pub listen: String,
    /// SHA-256 (hex) of the administrator's token. The environment
    /// variable `TABLEHOST_ADMIN_TOKEN`, holding the token itself, takes
    /// precedence.
    pub token_sha256: Option<String>,
    /// The largest component a tenant may upload, in MiB. Default 64.
    pub max_component_mib: u64,
    /// Partitions of a tenant's source topic that does not exist yet when
    /// its agent is deployed. Default 4.
    pub default_partitions: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            token_sha256: None,
            max_component_mib: 64,
            default_partitions: 4,
        }
    }
}

/// The `[recovery]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    /// The action when a store has applied changelog offsets that the
    /// changelog no longer has, as after the changelog topic was deleted
    /// and recreated. Default `fail`.
    #[serde(default)]
    pub store_ahead: StoreAhead,
}

/// The choices of `recovery.store_ahead`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreAhead {
    /// Stop with an error that names the partition and both offsets.
    #[default]
    Fail,
    /// Drop the partition's state and replay the changelog from its start.
    /// State that exists only in the dropped store is lost.
    Rebuild,
}

/// A topic the host creates when it is missing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// The topic name.
    pub name: String,
    /// The number of partitions.
    pub partitions: u32,
}

/// One agent: a component and the topics and tables it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent name, used in logs and in its dead-letter topic
    /// `<app_id>-<name>-dead-letters`.
    pub name: String,
    /// Path of the WebAssembly component, relative to the config file.
    pub component: PathBuf,
    /// Topics the agent consumes.
    pub sources: Vec<String>,
    /// Topics the agent may send to.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Tables the agent may open.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Resource limits of the agent's instances.
    #[serde(default)]
    pub limits: Limits,
    /// The probation of a new version after a swap.
    #[serde(default)]
    pub rollout: Rollout,
    /// The WASI capabilities the agent gets beyond the minimum.
    #[serde(default)]
    pub wasi: WasiGrants,
    /// The tenant that owns the agent, for agents deployed through the
    /// admin API. Its tables and topics are named `<tenant>.<name>` in
    /// Kafka and in the store, and the agent itself uses the bare names.
    #[serde(skip)]
    pub tenant: Option<String>,
}

/// WASI capabilities an agent may be granted. Without a grant an agent
/// sees no files, network, environment or arguments, and its clocks
/// stand still at zero; its stdout and stderr go to the host's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasiGrants {
    /// Give the agent the real wall clock and monotonic clock.
    pub clocks: bool,
}

/// The probation settings of a new version after a swap.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rollout {
    /// Events the new version handles on probation. While it is on
    /// probation the previous version stays loaded. Default 1000; 0 turns
    /// automatic rollback off.
    pub probation_events: u64,
    /// The share of probation events that may trap or fail. One more rolls
    /// the agent back to the previous version. Default 0.1.
    pub max_trap_share: f64,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            probation_events: 1000,
            max_trap_share: 0.1,
        }
    }
}

impl Rollout {
    /// Returns the traps allowed on probation.
    pub(crate) fn trap_budget(&self) -> u64 {
        (self.max_trap_share * self.probation_events as f64).floor() as u64
    }
}

/// Resource limits of one agent instance.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU time an event may take, in milliseconds of wall-clock time spent
    /// inside the agent. A batch of n events gets n times this budget. An
    /// agent over budget traps. Default 200.
    pub cpu_ms_per_event: u64,
    /// Maximum linear memory of one instance in MiB. Default 64.
    pub memory_mib: u64,
    /// Maximum size of a table or record key in bytes. Default 4096.
    pub max_key_bytes: u64,
    /// Maximum size of a table or record value in bytes. Default 1 MiB.
    pub max_value_bytes: u64,
    /// Maximum keys one partition of a table the agent writes may hold. A
    /// write over it traps, and the event goes to the dead-letter topic.
    /// Default none.
    pub max_table_keys: Option<u64>,
    /// Maximum bytes (keys plus values) one partition of a table the agent
    /// writes may hold, enforced like `max_table_keys`. Default none.
    pub max_table_bytes: Option<u64>,
}

impl Limits {
    /// Returns the name of the first limit set to 0, which would let
    /// nothing run; every limit must be at least 1.
    pub fn zero_field(&self) -> Option<&'static str> {
        [
            ("cpu_ms_per_event", self.cpu_ms_per_event),
            ("memory_mib", self.memory_mib),
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("max_table_keys", self.max_table_keys.unwrap_or(1)),
            ("max_table_bytes", self.max_table_bytes.unwrap_or(1)),
        ]
        .into_iter()
        .find(|(_, value)| *value == 0)
        .map(|(field, _)| field)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_ms_per_event: 200,
            memory_mib: 64,
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            max_table_keys: None,
            max_table_bytes: None,
        }
    }
}

/// One table.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The table name; its changelog topic is `<app_id>-<name>-changelog`.
    pub name: String,
    /// The store behind the table.
    #[serde(default)]
    pub store: StoreKind,
    /// RocksDB tuning, used when `store = "rocksdb"`.
    #[serde(default)]
    pub rocksdb: RocksOptions,
    /// Whether each worker has only its own partitions (`table`, the default)
    /// or every partition (`global`).
    #[serde(default)]
    pub kind: TableKindConfig,
    /// Time windows; present only for a windowed table.
    #[serde(default)]
    pub window: Option<WindowConfig>,
}

/// The choices of `tables[].kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKindConfig {
    /// Partitioned like the source topic: a worker owns the partitions it
    /// is assigned.
    #[default]
    Table,
    /// Every worker has every partition and follows the changelog, so
    /// reads see every key. A key lives in the partition its murmur2 hash
    /// chooses, whichever source partition wrote it.
    Global,
}

/// The `[tables.window]` section of a windowed table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// `tumbling`, `hopping` or `sliding`.
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// The length of a window in milliseconds.
    pub size_ms: i64,
    /// The distance between the starts of two hopping windows, in
    /// milliseconds. Required for hopping windows and rejected otherwise.
    #[serde(default)]
    pub step_ms: Option<i64>,
    /// How long after its end a window still accepts writes, in
    /// milliseconds of stream time. Default 0.
    #[serde(default)]
    pub expires_ms: i64,
    /// A top-level field of the JSON record value that holds the event
    /// time: integer milliseconds since the Unix epoch, or a UTC time such
    /// as `"2001-01-14 21:55:00"`, the form `tablehost load` writes Parquet
    /// timestamps in. When absent the record timestamp is the event time.
    #[serde(default)]
    pub time_field: Option<String>,
}

/// The kinds of time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// Windows of `size_ms` that follow one another without gaps; every
    /// instant lies in exactly one.
    Tumbling,
    /// Windows of `size_ms` that start every `step_ms`; an instant lies in
    /// `size_ms / step_ms` windows.
    Hopping,
    /// One window per event: the `size_ms` milliseconds that end with the
    /// event.
    Sliding,
}

/// The store behind a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In memory; rebuilt from the changelog on every start.
    Memory,
    /// RocksDB in the state directory.
    #[default]
    Rocksdb,
}

fn default_commit_interval_ms() -> u64 {
    1000
}

fn default_batch_size() -> usize {
    512
}

/// A config that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    // The I/O error is part of the message and deliberately not a
    // `source`, so reports that print the error chain show it once.
    #[error("config {path}: cannot read the file: {error}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not match the config schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message, which names the line and key.
        message: String,
    },
    /// A key has an invalid value.
    #[error("config {path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key, such as `agents[0].tables`.
        key: String,
        /// The problem and its fix.
        message: String,
    },
}

impl Config {
    /// Reads and validates the config file at `path`. Relative paths inside
    /// the file are resolved against the file's directory.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] naming the key and the fix when the file is
    /// unreadable, malformed or invalid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses and validates config text; `path` is used in messages and
    /// `base` resolves relative paths.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        for agent in &mut config.agents {
            if agent.component.is_relative() {
                agent.component = base.join(&agent.component);
            }
        }
        if let Some(dir) = &config.state_dir {
            if dir.is_relative() {
                config.state_dir = Some(base.join(dir));
            }
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Returns the state directory, applying the default.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".tablehost").join(&self.app_id))
    }

    /// Returns the changelog topic of `table`.
    pub fn changelog_topic(&self, table: &str) -> String {
        crate::changelog::topic_name(&self.app_id, table)
    }

    /// Returns the dead-letter topic of `agent`.
    pub fn dead_letter_topic(&self, agent: &str) -> String {
        format!("{}-{}-dead-letters", self.app_id, agent)
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };

        check_name(&self.app_id).map_err(|m| invalid("app_id".into(), m))?;
        if let Some(brokers) = &self.brokers {
            if brokers.trim().is_empty() {
                return Err(invalid(
                    "brokers".into(),
                    "is empty; remove the key to use the embedded cluster, or set host:port".into(),
                ));
            }
        }
        if self.commit_interval_ms == 0 {
            return Err(invalid(
                "commit_interval_ms".into(),
                "must be at least 1".into(),
            ));
        }
        if self.batch_size == 0 {
            return Err(invalid("batch_size".into(), "must be at least 1".into()));
        }
        for (i, topic) in self.topics.iter().enumerate() {
            check_topic(&topic.name).map_err(|m| invalid(format!("topics[{i}].name"), m))?;
            if topic.partitions == 0 {
                return Err(invalid(
                    format!("topics[{i}].partitions"),
                    "must be at least 1".into(),
                ));
            }
        }

        let mut tables = BTreeSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            check_name(&table.name).map_err(|m| invalid(format!("tables[{i}].name"), m))?;
            if !tables.insert(table.name.as_str()) {
                return Err(invalid(
                    format!("tables[{i}].name"),
                    format!(
                        "table {:?} is declared twice; give each table a unique name",
                        table.name
                    ),
                ));
            }
            if let Some(window) = &table.window {
                let key = |field: &str| format!("tables[{i}].window.{field}");
                if table.kind == TableKindConfig::Global {
                    return Err(invalid(
                        format!("tables[{i}].kind"),
                        "a global table cannot have windows; remove `kind` or the [tables.window] section".into(),
                    ));
                }
                if window.size_ms <= 0 {
                    return Err(invalid(key("size_ms"), "must be at least 1".into()));
                }
                match (window.kind, window.step_ms) {
                    (WindowKind::Hopping, None) => {
                        return Err(invalid(
                            key("step_ms"),
                            "is required for hopping windows".into(),
                        ))
                    }
                    (WindowKind::Hopping, Some(step)) if step <= 0 || step > window.size_ms => {
                        return Err(invalid(
                            key("step_ms"),
                            format!(
                                "is {step}; it must be between 1 and size_ms ({})",
                                window.size_ms
                            ),
                        ))
                    }
                    (WindowKind::Tumbling | WindowKind::Sliding, Some(_)) => {
                        return Err(invalid(
                            key("step_ms"),
                            "applies only to hopping windows; remove it".into(),
                        ))
                    }
                    _ => {}
                }
                if window.expires_ms < 0 {
                    return Err(invalid(key("expires_ms"), "must not be negative".into()));
                }
                if window.time_field.as_deref() == Some("") {
                    return Err(invalid(
                        key("time_field"),
                        "is empty; name a field of the JSON value, or remove the key to use the record timestamp".into(),
                    ));
                }
            }
            if table.rocksdb.write_buffer_mib == 0 {
                return Err(invalid(
                    format!("tables[{i}].rocksdb.write_buffer_mib"),
                    "must be at least 1".into(),
                ));
            }
        }

        let mut agents = BTreeSet::new();
        for (i, agent) in self.agents.iter().enumerate() {
            let key = |field: &str| format!("agents[{i}].{field}");
            check_name(&agent.name).map_err(|m| invalid(key("name"), m))?;
            if !agents.insert(agent.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "agent {:?} is declared twice; give each agent a unique name",
                        agent.name
                    ),
                ));
            }
            if agent.tenant.is_none() && !agent.component.is_file() {
                return Err(invalid(key("component"), format!("file {} not found; build the agent (`make plugins`) or fix the path, which is relative to the config file", agent.component.display())));
            }
            if agent.sources.is_empty() {
                return Err(invalid(
                    key("sources"),
                    "is empty; list at least one topic to consume".into(),
                ));
            }
            for topic in agent.sources.iter().chain(&agent.outputs) {
                check_topic(topic).map_err(|m| invalid(key("sources/outputs"), m))?;
            }
            for table in &agent.tables {
                if !tables.contains(table.as_str()) {
                    return Err(invalid(key("tables"), format!("table {table:?} is not declared; add a [[tables]] section with name = {table:?}")));
                }
            }
            if let Some(field) = agent.limits.zero_field() {
                return Err(invalid(
                    key(&format!("limits.{field}")),
                    "must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Checks an app, agent or table name: it becomes part of topic names and
/// directory names, so only Kafka's topic characters are allowed.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty; use letters, digits, '.', '_' or '-'".into());
    }
    check_topic(name)
}

fn check_topic(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("{name:?} must be 1 to 200 characters long"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; use only letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, dir: &Path) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("app.toml"), dir)
    }

    fn valid_text() -> &'static str {
        r#"
            app_id = "demo"
            [[agents]]
            name = "count"
            component = "agent.wasm"
            sources = ["in"]
            tables = ["counts"]
            [[tables]]
            name = "counts"
        "#
    }

    fn dir_with_component() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.wasm"), b"\0asm").unwrap();
        dir
    }

    #[test]
    fn config_valid_uses_defaults() {
        let dir = dir_with_component();
        let config = parse(valid_text(), dir.path()).unwrap();
        assert_eq!(config.brokers, None);
        assert_eq!(config.commit_interval_ms, 1000);
        assert_eq!(config.tables[0].store, StoreKind::Rocksdb);
        assert_eq!(config.agents[0].limits.memory_mib, 64);
        assert_eq!(config.agents[0].component, dir.path().join("agent.wasm"));
        assert_eq!(config.changelog_topic("counts"), "demo-counts-changelog");
    }

    #[test]
    fn config_undeclared_table_names_key() {
        let dir = dir_with_component();
        let text = valid_text().replace("tables = [\"counts\"]", "tables = [\"other\"]");
        let error = parse(&text, dir.path()).unwrap_err().to_string();
        assert_eq!(
            error,
            "config app.toml: agents[0].tables: table \"other\" is not declared; add a [[tables]] section with name = \"other\""
        );
    }

    #[test]
    fn config_missing_component_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = parse(valid_text(), dir.path()).unwrap_err().to_string();
        assert!(
            error.starts_with("config app.toml: agents[0].component: file "),
            "{error}"
        );
        assert!(error.contains("agent.wasm not found"), "{error}");
    }

    #[test]
    fn config_unknown_key_is_rejected() {
        let dir = dir_with_component();
        let text = format!("colour = 1\n{}", valid_text());
        let error = parse(&text, dir.path()).unwrap_err().to_string();
        assert!(error.contains("unknown field `colour`"), "{error}");
    }

    #[test]
    fn config_bad_app_id_is_rejected() {
        let dir = dir_with_component();
        let text = valid_text().replace("app_id = \"demo\"", "app_id = \"my app\"");
        let error = parse(&text, dir.path()).unwrap_err().to_string();
        assert_eq!(error, "config app.toml: app_id: \"my app\" contains ' '; use only letters, digits, '.', '_' or '-'");
    }

    #[test]
    fn config_window_is_parsed_and_checked() {
        let dir = dir_with_component();
        let windowed = format!(
            "{}\n[tables.window]\ntype = \"hopping\"\nsize_ms = 10000\nstep_ms = 5000\ntime_field = \"ts\"\n",
            valid_text()
        );
        let config = parse(&windowed, dir.path()).unwrap();
        assert_eq!(
            config.tables[0].window,
            Some(WindowConfig {
                kind: WindowKind::Hopping,
                size_ms: 10_000,
                step_ms: Some(5_000),
                expires_ms: 0,
                time_field: Some("ts".into()),
            })
        );

        let no_step = windowed.replace("step_ms = 5000\n", "");
        let error = parse(&no_step, dir.path()).unwrap_err().to_string();
        assert_eq!(
            error,
            "config app.toml: tables[0].window.step_ms: is required for hopping windows"
        );
        let long_step = windowed.replace("step_ms = 5000", "step_ms = 20000");
        let error = parse(&long_step, dir.path()).unwrap_err().to_string();
        assert_eq!(
            error,
            "config app.toml: tables[0].window.step_ms: is 20000; it must be between 1 and size_ms (10000)"
        );
        let global = windowed.replace(
            "name = \"counts\"\n",
            "name = \"counts\"\nkind = \"global\"\n",
        );
        let error = parse(&global, dir.path()).unwrap_err().to_string();
        assert_eq!(
            error,
            "config app.toml: tables[0].kind: a global table cannot have windows; remove `kind` or the [tables.window] section"
        );
    }

    #[test]
    fn config_zero_limit_is_rejected() {
        let dir = dir_with_component();
        let text = format!(
            "{}\n[agents.limits]\nmemory_mib = 0\n",
            valid_text().replace("[[tables]]\n            name = \"counts\"", "")
        );
        let text = format!("{text}\n[[tables]]\nname = \"counts\"\n");
        let error = parse(&text, dir.path()).unwrap_err().to_string();
        assert_eq!(
            error,
            "config app.toml: agents[0].limits.memory_mib: must be at least 1"
        );
    }
}
