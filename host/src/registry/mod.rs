//! The registry of tenants, agents, versions and deployments.
//!
//! The registry is the durable, shared state behind the admin API. It lives
//! in two Kafka topics of the application (see [`log`]):
//!
//! - `<app_id>-registry`, compacted, one partition: one record per tenant,
//!   per uploaded version and per deployment, each holding the entry's
//!   whole state as JSON, so the newest record of a key is the truth;
//! - `<app_id>-registry-blobs`, compacted: the uploaded bytes in chunks.
//!
//! Every `tablehost serve` process of an application reads both topics at
//! start and follows them, so every worker runs the same version of every
//! agent. [`Registry`] is the state those records build; applying a record
//! twice changes nothing.
//!
//! A tenant's names are its own: its agent `counter` runs as
//! `<tenant>.counter`, its table `counts` is `<tenant>.counts` in the store
//! and the changelog, and its topic `events` is `<tenant>.events` in
//! Kafka. The agent itself uses the bare names.

pub mod log;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AgentConfig, Limits, Rollout, TableConfig, WasiGrants};

/// A tenant: its token's hash and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// The tenant's name, the prefix of its agents, tables and topics.
    pub name: String,
    /// SHA-256 of the tenant's bearer token, hex. The token itself is
    /// shown once, when the tenant is created, and never stored.
    pub token_sha256: String,
    /// The maximum limits any of the tenant's agents may be given.
    pub limits: Limits,
}

/// The manifest a tenant uploads with a component: the agent's shape and
/// limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The agent's name within the tenant.
    pub name: String,
    /// Topics the agent consumes, without the tenant prefix.
    pub sources: Vec<String>,
    /// Topics the agent may send to, without the tenant prefix.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Tables the agent uses, with their options, as under `[[tables]]` in
    /// a config file.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Limits of the agent's instances; each must be within the tenant's.
    /// By default the tenant's limits.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Probation of a swapped-in version.
    #[serde(default)]
    pub rollout: Rollout,
    /// WASI capabilities beyond the minimum.
    #[serde(default)]
    pub wasi: WasiGrants,
}

/// One uploaded version of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The owning tenant.
    pub tenant: String,
    /// The agent's name within the tenant.
    pub agent: String,
    /// The version number, from 1 up per agent.
    pub number: u32,
    /// The manifest uploaded with it.
    pub manifest: Manifest,
    /// SHA-256 of the uploaded bytes, hex; the blob's name.
    pub sha256: String,
    /// Size of the uploaded bytes.
    pub size: u64,
    /// The interfaces the component imports.
    pub imports: Vec<String>,
    /// Whether the upload was a core module.
    pub core_module: bool,
    /// When it was uploaded, in milliseconds since the epoch.
    pub uploaded_ms: i64,
}

impl VersionRecord {
    /// Returns the version's label, as logs and counters show it.
    pub fn label(&self) -> String {
        format!("v{}", self.number)
    }
}

/// The deployment of an agent: the version that runs and those before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// The owning tenant.
    pub tenant: String,
    /// The agent's name within the tenant.
    pub agent: String,
    /// The version that runs.
    pub version: u32,
    /// Versions deployed before, oldest first.
    pub history: Vec<u32>,
    /// The reason of the last change.
    pub reason: String,
    /// When it last changed, in milliseconds since the epoch.
    pub changed_ms: i64,
}

/// One entry of the registry topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A tenant; `None` deletes it.
    Tenant(String, Option<TenantRecord>),
    /// A version; `None` deletes it.
    Version((String, String, u32), Option<VersionRecord>),
    /// A deployment; `None` stops the agent.
    Deployment((String, String), Option<DeploymentRecord>),
}

impl Entry {
    /// Returns the record key.
    pub fn key(&self) -> String {
        match self {
            Entry::Tenant(name, _) => format!("tenant/{name}"),
            Entry::Version((tenant, agent, number), _) => {
                format!("version/{tenant}/{agent}/{number}")
            }
            Entry::Deployment((tenant, agent), _) => format!("deployment/{tenant}/{agent}"),
        }
    }

    /// Returns the record value: the JSON state, or `None` for a tombstone.
    pub fn value(&self) -> Option<Vec<u8>> {
        let json = match self {
            Entry::Tenant(_, record) => record.as_ref().map(serde_json::to_vec),
            Entry::Version(_, record) => record.as_ref().map(serde_json::to_vec),
            Entry::Deployment(_, record) => record.as_ref().map(serde_json::to_vec),
        };
        json.map(|r| r.expect("registry records serialize"))
    }

    /// Parses a record of the registry topic.
    ///
    /// # Errors
    ///
    /// Fails on a key of unknown shape or a value that does not parse.
    pub fn parse(key: &[u8], value: Option<&[u8]>) -> anyhow::Result<Self> {
        let key = std::str::from_utf8(key)
            .map_err(|_| anyhow::anyhow!("registry: a record key is not UTF-8"))?;
        let parts: Vec<&str> = key.split('/').collect();
        let json = |what: &str| -> anyhow::Result<_> {
            anyhow::Ok(value.map(|v| (what.to_owned(), v.to_vec())))
        };
        Ok(match parts.as_slice() {
            ["tenant", name] => Entry::Tenant(
                (*name).to_owned(),
                json("tenant")?
                    .map(|(_, v)| serde_json::from_slice(&v))
                    .transpose()?,
            ),
            ["version", tenant, agent, number] => Entry::Version(
                ((*tenant).to_owned(), (*agent).to_owned(), number.parse()?),
                json("version")?
                    .map(|(_, v)| serde_json::from_slice(&v))
                    .transpose()?,
            ),
            ["deployment", tenant, agent] => Entry::Deployment(
                ((*tenant).to_owned(), (*agent).to_owned()),
                json("deployment")?
                    .map(|(_, v)| serde_json::from_slice(&v))
                    .transpose()?,
            ),
            _ => anyhow::bail!("registry: unknown record key {key:?}"),
        })
    }
}

/// The state the registry topic describes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    /// Tenants by name.
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Versions by tenant, agent and number.
    pub versions: BTreeMap<(String, String, u32), VersionRecord>,
    /// Deployments by tenant and agent.
    pub deployments: BTreeMap<(String, String), DeploymentRecord>,
}

impl Registry {
    /// Applies one entry.
    pub fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Tenant(name, Some(record)) => {
                self.tenants.insert(name, record);
            }
            Entry::Tenant(name, None) => {
                self.tenants.remove(&name);
            }
            Entry::Version(key, Some(record)) => {
                self.versions.insert(key, record);
            }
            Entry::Version(key, None) => {
                self.versions.remove(&key);
            }
            Entry::Deployment(key, Some(record)) => {
                self.deployments.insert(key, record);
            }
            Entry::Deployment(key, None) => {
                self.deployments.remove(&key);
            }
        }
    }

    /// Returns the tenant whose token hashes to `token_sha256`.
    pub fn tenant_by_token(&self, token_sha256: &str) -> Option<&TenantRecord> {
        self.tenants
            .values()
            .find(|t| t.token_sha256 == token_sha256)
    }

    /// Returns the versions of `tenant`'s agent `agent`, oldest first.
    pub fn versions_of(&self, tenant: &str, agent: &str) -> Vec<&VersionRecord> {
        self.versions
            .range(
                (tenant.to_owned(), agent.to_owned(), 0)
                    ..=(tenant.to_owned(), agent.to_owned(), u32::MAX),
            )
            .map(|(_, v)| v)
            .collect()
    }

    /// Returns the version of each deployed agent with its tenant's
    /// record, in name order. A deployment whose version or tenant is gone
    /// is left out.
    pub fn deployed(&self) -> Vec<(&TenantRecord, &VersionRecord)> {
        self.deployments
            .values()
            .filter_map(|d| {
                let tenant = self.tenants.get(&d.tenant)?;
                let version = self
                    .versions
                    .get(&(d.tenant.clone(), d.agent.clone(), d.version))?;
                Some((tenant, version))
            })
            .collect()
    }
}

/// Returns the SHA-256 of `bytes` as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a tenant or agent name: 1 to 40 lowercase letters, digits and
/// '-', starting with a letter. Names become prefixes of topics, tables
/// and directories, so they are kept plain.
///
/// # Errors
///
/// Returns what is wrong with the name, for an error reply.
pub fn check_plain_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not valid; use 1 to 40 lowercase letters, digits and '-', starting with a letter"
        ))
    }
}

/// Returns `name` in `tenant`'s namespace.
pub fn namespaced(tenant: &str, name: &str) -> String {
    format!("{tenant}.{name}")
}

/// Returns the agent config and table configs that run `version` of
/// `tenant`, with every name in the tenant's namespace. Agents deployed
/// this way have no component file; the worker gets the prepared version.
pub fn agent_config(tenant: &TenantRecord, manifest: &Manifest) -> (AgentConfig, Vec<TableConfig>) {
    let ns = |name: &String| namespaced(&tenant.name, name);
    let tables: Vec<TableConfig> = manifest
        .tables
        .iter()
        .map(|t| TableConfig {
            name: ns(&t.name),
            ..t.clone()
        })
        .collect();
    let agent = AgentConfig {
        name: ns(&manifest.name),
        component: std::path::PathBuf::new(),
        sources: manifest.sources.iter().map(ns).collect(),
        outputs: manifest.outputs.iter().map(ns).collect(),
        tables: tables.iter().map(|t| t.name.clone()).collect(),
        limits: effective_limits(manifest, tenant),
        rollout: manifest.rollout,
        wasi: manifest.wasi,
        tenant: Some(tenant.name.clone()),
    };
    (agent, tables)
}

/// Returns the limits an agent of `manifest` runs with: the manifest's,
/// or by default the tenant's. A table size limit the manifest leaves out
/// is the tenant's.
fn effective_limits(manifest: &Manifest, tenant: &TenantRecord) -> Limits {
    let mut limits = manifest
        .limits
        .clone()
        .unwrap_or_else(|| tenant.limits.clone());
    limits.max_table_keys = limits.max_table_keys.or(tenant.limits.max_table_keys);
    limits.max_table_bytes = limits.max_table_bytes.or(tenant.limits.max_table_bytes);
    limits
}

/// Returns what about a manifest is wrong for `tenant`, checking names,
/// tables and limits; the component is checked separately.
///
/// # Errors
///
/// Returns the first problem, naming the field.
pub fn check_manifest(manifest: &Manifest, tenant: &TenantRecord) -> Result<(), String> {
    check_plain_name("agent name", &manifest.name)?;
    if manifest.sources.is_empty() {
        return Err("sources is empty; list at least one topic to consume".into());
    }
    for topic in manifest.sources.iter().chain(&manifest.outputs) {
        check_plain_name("topic", topic)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for table in &manifest.tables {
        check_plain_name("table", &table.name)?;
        if !seen.insert(&table.name) {
            return Err(format!("table {:?} is listed twice", table.name));
        }
    }
    if let Some(field) = manifest.limits.as_ref().and_then(Limits::zero_field) {
        return Err(format!("limits.{field} is 0; it must be at least 1"));
    }
    if let Some(limits) = &manifest.limits {
        for (field, asked, allowed) in [
            (
                "cpu_ms_per_event",
                limits.cpu_ms_per_event,
                tenant.limits.cpu_ms_per_event,
            ),
            ("memory_mib", limits.memory_mib, tenant.limits.memory_mib),
            (
                "max_key_bytes",
                limits.max_key_bytes,
                tenant.limits.max_key_bytes,
            ),
            (
                "max_value_bytes",
                limits.max_value_bytes,
                tenant.limits.max_value_bytes,
            ),
        ] {
            if asked > allowed {
                return Err(format!(
                    "limits.{field} is {asked}, above tenant {}'s limit of {allowed}; ask the administrator to raise it, or lower it",
                    tenant.name
                ));
            }
        }
    }
    if let Some(field) = manifest.limits.as_ref().and_then(Limits::zero_field) {
        return Err(format!("limits.{field} is 0; it must be at least 1"));
    }
    if let Some(limits) = &manifest.limits {
        for (field, asked, allowed) in [
            (
                "max_table_keys",
                limits.max_table_keys,
                tenant.limits.max_table_keys,
            ),
            (
                "max_table_bytes",
                limits.max_table_bytes,
                tenant.limits.max_table_bytes,
            ),
        ] {
            if let (Some(asked), Some(allowed)) = (asked, allowed) {
                if asked > allowed {
                    return Err(format!(
                        "limits.{field} is {asked}, above tenant {}'s limit of {allowed}; ask the administrator to raise it, or lower it",
                        tenant.name
                    ));
                }
            }
        }
    }
    if !(0.0..=1.0).contains(&manifest.rollout.max_trap_share) {
        return Err(format!(
            "rollout.max_trap_share is {}; it must be between 0 and 1",
            manifest.rollout.max_trap_share
        ));
    }
    Ok(())
}

/// Checks that a manifest makes a valid agent for `tenant`: its names and
/// limits ([`check_manifest`]), and its tables' options as a config file's
/// `[[tables]]` would be checked.
///
/// # Errors
///
/// Returns the first problem, naming the field.
pub fn check_runnable(manifest: &Manifest, tenant: &TenantRecord) -> Result<(), String> {
    check_manifest(manifest, tenant)?;
    let (agent, tables) = agent_config(tenant, manifest);
    let mut config: crate::config::Config =
        toml::from_str("app_id = \"check\"\n[admin]\n").expect("a minimal config parses");
    config.agents = vec![agent];
    config.tables = tables;
    for table in &mut config.tables {
        if let Some(bare) = table.name.strip_prefix(&format!("{}.", tenant.name)) {
            table.name = bare.to_owned();
        }
    }
    config.agents[0].tables = config.tables.iter().map(|t| t.name.clone()).collect();
    config
        .validate(std::path::Path::new("manifest"))
        .map_err(|e| match e {
            crate::config::ConfigError::Invalid { key, message, .. } => {
                let key = key.replace("agents[0].", "");
                format!("{key}: {message}")
            }
            other => other.to_string(),
        })
}

/// The shape of a deployed agent: what cannot change without restarting
/// the worker (sources, outputs, tables, WASI grants). Two versions with
/// the same shape are swapped in place.
pub fn shape(agent: &AgentConfig, tables: &[TableConfig]) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}",
        agent.sources, agent.outputs, tables, agent.wasi
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantRecord {
        TenantRecord {
            name: "acme".into(),
            token_sha256: sha256_hex(b"secret"),
            limits: Limits::default(),
        }
    }

    #[test]
    fn entries_round_trip_through_keys_and_values() {
        let entries = [
            Entry::Tenant("acme".into(), Some(tenant())),
            Entry::Tenant("acme".into(), None),
            Entry::Deployment(
                ("acme".into(), "counter".into()),
                Some(DeploymentRecord {
                    tenant: "acme".into(),
                    agent: "counter".into(),
                    version: 2,
                    history: vec![1],
                    reason: "deployed".into(),
                    changed_ms: 5,
                }),
            ),
        ];
        for entry in entries {
            let parsed = Entry::parse(entry.key().as_bytes(), entry.value().as_deref()).unwrap();
            assert_eq!(parsed, entry);
        }
        assert!(Entry::parse(b"other/x", None).is_err());
    }

    #[test]
    fn plain_names_are_checked() {
        assert!(check_plain_name("tenant", "acme-2").is_ok());
        for bad in ["", "Acme", "2acme", "a.b", "a/b", &"a".repeat(41)] {
            assert!(check_plain_name("tenant", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_limits_stay_within_the_tenant() {
        let mut manifest = Manifest {
            name: "counter".into(),
            sources: vec!["events".into()],
            outputs: vec![],
            tables: vec![],
            limits: Some(Limits {
                memory_mib: 1024,
                ..Limits::default()
            }),
            rollout: Rollout::default(),
            wasi: WasiGrants::default(),
        };
        let error = check_manifest(&manifest, &tenant()).unwrap_err();
        assert_eq!(error, "limits.memory_mib is 1024, above tenant acme's limit of 64; ask the administrator to raise it, or lower it");
        manifest.limits = None;
        assert_eq!(check_manifest(&manifest, &tenant()), Ok(()));
        assert_eq!(check_runnable(&manifest, &tenant()), Ok(()));
    }
}
