//! `tablehost agent` and `tablehost tenant`: the admin API from the
//! command line. Replies are printed as JSON.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::admin::client::Client;
use crate::registry::Manifest;

/// The admin API's address and the token to send.
#[derive(Debug, Args)]
pub struct Connection {
    /// The admin API's address.
    #[arg(
        long,
        env = "TABLEHOST_ADMIN_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    admin: String,
    /// The bearer token: a tenant's for `agent` commands, the
    /// administrator's for `tenant` commands.
    #[arg(long, env = "TABLEHOST_TOKEN", hide_env_values = true)]
    token: String,
}

/// `tablehost agent ...`
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Upload a new version: a component (or a wit-bindgen core module)
    /// and its manifest (TOML: name, sources, outputs, [[tables]], [limits]).
    Upload {
        /// The manifest file.
        #[arg(long)]
        manifest: PathBuf,
        /// The component file.
        #[arg(long)]
        component: PathBuf,
    },
    /// List the tenant's agents, their versions and deployments.
    List,
    /// Show one version: status, imports, size and counters.
    Show {
        /// The agent.
        name: String,
        /// The version number.
        version: u32,
    },
    /// Deploy a version: start the agent, or swap it to this version.
    Deploy {
        /// The agent.
        name: String,
        /// The version number.
        version: u32,
        /// Wait up to this many seconds for the version to finish compiling.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Roll back to the version deployed before, or to VERSION.
    Rollback {
        /// The agent.
        name: String,
        /// The version number; by default the one deployed before.
        version: Option<u32>,
    },
    /// Stop the agent and delete its versions.
    Remove {
        /// The agent.
        name: String,
    },
}

/// `tablehost tenant ...`
#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its token (shown only this once).
    Create {
        /// The tenant's name: lowercase letters, digits and '-'.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List tenants and their limits.
    List,
    /// Set a tenant's limits.
    Limits {
        /// The tenant.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// Limits of a tenant's agents; unset ones keep the defaults.
#[derive(Debug, Args)]
struct LimitArgs {
    /// CPU time per event, in milliseconds (default 200).
    #[arg(long)]
    cpu_ms_per_event: Option<u64>,
    /// Linear memory per instance, in MiB (default 64).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Largest key, in bytes (default 4096).
    #[arg(long)]
    max_key_bytes: Option<u64>,
    /// Largest value, in bytes (default 1 MiB).
    #[arg(long)]
    max_value_bytes: Option<u64>,
    /// Most keys one partition of a table may hold (default no limit).
    #[arg(long)]
    max_table_keys: Option<u64>,
    /// Most bytes one partition of a table may hold (default no limit).
    #[arg(long)]
    max_table_bytes: Option<u64>,
}

impl LimitArgs {
    fn to_json(&self) -> Value {
        let defaults = crate::config::Limits::default();
        json!({
            "cpu_ms_per_event": self.cpu_ms_per_event.unwrap_or(defaults.cpu_ms_per_event),
            "memory_mib": self.memory_mib.unwrap_or(defaults.memory_mib),
            "max_key_bytes": self.max_key_bytes.unwrap_or(defaults.max_key_bytes),
            "max_value_bytes": self.max_value_bytes.unwrap_or(defaults.max_value_bytes),
            "max_table_keys": self.max_table_keys,
            "max_table_bytes": self.max_table_bytes,
        })
    }
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

pub(super) fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection.admin, &args.connection.token);
    let reply = match args.command {
        AgentCommand::Upload {
            manifest,
            component,
        } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read manifest {}", manifest.display()))?;
            let manifest: Manifest = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "manifest {}: {}",
                    manifest.display(),
                    e.to_string().trim_end()
                )
            })?;
            let bytes = std::fs::read(&component)
                .with_context(|| format!("cannot read component {}", component.display()))?;
            let body = json!({
                "manifest": manifest,
                "component": base64::engine::general_purpose::STANDARD.encode(&bytes),
            });
            client.call("POST", "/v1/agents", Some(&body))?
        }
        AgentCommand::List => client.call("GET", "/v1/agents", None)?,
        AgentCommand::Show { name, version } => client.call(
            "GET",
            &format!("/v1/agents/{name}/versions/{version}"),
            None,
        )?,
        AgentCommand::Deploy {
            name,
            version,
            wait,
        } => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            loop {
                let status = client.call(
                    "GET",
                    &format!("/v1/agents/{name}/versions/{version}"),
                    None,
                )?;
                if status["status"] != "compiling" || std::time::Instant::now() >= deadline {
                    break;
                }
                eprintln!("version {version} of {name} is compiling; waiting");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            client.call(
                "POST",
                &format!("/v1/agents/{name}/deploy"),
                Some(&json!({ "version": version })),
            )?
        }
        AgentCommand::Rollback { name, version } => client.call(
            "POST",
            &format!("/v1/agents/{name}/rollback"),
            Some(&json!({ "version": version })),
        )?,
        AgentCommand::Remove { name } => {
            client.call("DELETE", &format!("/v1/agents/{name}"), None)?
        }
    };
    print(&reply);
    Ok(())
}

pub(super) fn tenant(args: TenantArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.connection.admin, &args.connection.token);
    let reply = match args.command {
        TenantCommand::Create { name, limits } => client.call(
            "POST",
            "/v1/tenants",
            Some(&json!({ "name": name, "limits": limits.to_json() })),
        )?,
        TenantCommand::List => client.call("GET", "/v1/tenants", None)?,
        TenantCommand::Limits { name, limits } => client.call(
            "PUT",
            &format!("/v1/tenants/{name}/limits"),
            Some(&limits.to_json()),
        )?,
    };
    print(&reply);
    Ok(())
}
