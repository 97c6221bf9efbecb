//! The HTTP admin API of `tablehost serve`.
//!
//! Every route takes a bearer token. The administrator's token manages
//! tenants; a tenant's token manages that tenant's agents and nothing
//! else. A request without a token is refused as unauthenticated (401), a
//! token of the wrong kind as forbidden (403), and another tenant's agent
//! is simply not found (404). Tokens are compared by their SHA-256 and
//! never logged.
//!
//! Routes (all JSON; errors are `{"error": "..."}`):
//!
//! | method and path | token | what it does |
//! |---|---|---|
//! | `POST /v1/tenants` | admin | create a tenant; the reply contains its token, shown only once |
//! | `GET /v1/tenants` | admin | list tenants, their limits and their agents' counters added up |
//! | `PUT /v1/tenants/{tenant}/limits` | admin | set a tenant's limits |
//! | `POST /v1/agents` | tenant | upload a version: `{"manifest": {...}, "component": "<base64>"}` |
//! | `GET /v1/agents` | tenant | list agents, their versions and deployments |
//! | `GET /v1/agents/{agent}/versions/{n}` | tenant | one version: status, imports, size, counters |
//! | `POST /v1/agents/{agent}/deploy` | tenant | `{"version": n}`: start the agent, or swap it to `n` |
//! | `POST /v1/agents/{agent}/rollback` | tenant | `{"version": n}` or `{}` for the one before |
//! | `DELETE /v1/agents/{agent}` | tenant | stop the agent and delete its versions |

pub mod client;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Limits;
use crate::registry::{
    check_plain_name, check_runnable, sha256_hex, DeploymentRecord, Entry, Manifest, TenantRecord,
    VersionRecord,
};
use crate::serve::{Platform, VersionStatus};

/// An error reply: an HTTP status and a message with the fix.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{error:#}"), "admin: request failed");
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
    }
}

type Reply = Result<Response, ApiError>;

/// The caller of a request, from its token.
enum Caller {
    Admin,
    Tenant(TenantRecord),
}

fn caller(platform: &Platform, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated: send `Authorization: Bearer <token>` with the admin or tenant token",
            )
        })?;
    let digest = sha256_hex(token.as_bytes());
    if platform.admin_token_sha256.as_deref() == Some(digest.as_str()) {
        return Ok(Caller::Admin);
    }
    match platform.registry().tenant_by_token(&digest) {
        Some(tenant) => Ok(Caller::Tenant(tenant.clone())),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated: the token matches no tenant and is not the admin token",
        )),
    }
}

fn admin_only(platform: &Platform, headers: &HeaderMap) -> Result<(), ApiError> {
    match caller(platform, headers)? {
        Caller::Admin => Ok(()),
        Caller::Tenant(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden: managing tenants needs the admin token",
        )),
    }
}

fn tenant_only(platform: &Platform, headers: &HeaderMap) -> Result<TenantRecord, ApiError> {
    match caller(platform, headers)? {
        Caller::Tenant(tenant) => Ok(tenant),
        Caller::Admin => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden: agents belong to tenants; use the tenant's token",
        )),
    }
}

/// Runs a blocking registry operation off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("admin: task failed: {e}"),
        )
    })?
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Returns the router of the admin API over `platform`.
pub fn router(platform: Arc<Platform>) -> Router {
    Router::new()
        .route("/v1/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/tenants/{tenant}/limits", put(set_limits))
        .route("/v1/agents", post(upload).get(list_agents))
        .route("/v1/agents/{agent}", delete(remove_agent))
        .route("/v1/agents/{agent}/versions/{number}", get(show_version))
        .route("/v1/agents/{agent}/deploy", post(deploy))
        .route("/v1/agents/{agent}/rollback", post(rollback))
        .layer(axum::extract::DefaultBodyLimit::max(
            platform.max_request_bytes(),
        ))
        .with_state(platform)
}

/// Serves the admin API on `listener` until `stop` resolves.
///
/// # Errors
///
/// Fails when the server cannot accept connections.
pub async fn serve(
    platform: Arc<Platform>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, "admin: listening");
    axum::serve(listener, router(platform))
        .with_graceful_shutdown(stop)
        .await?;
    tracing::info!(%address, "admin: stopped");
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default)]
    limits: Option<Limits>,
}

async fn create_tenant(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    Json(request): Json<NewTenant>,
) -> Reply {
    admin_only(&platform, &headers)?;
    check_plain_name("tenant name", &request.name)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m))?;
    let limits = request.limits.unwrap_or_default();
    check_limits(&limits)?;
    blocking(move || {
        let _change = platform.change_lock();
        if platform.registry().tenants.contains_key(&request.name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("tenant {:?} exists; pick another name", request.name),
            ));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| anyhow::anyhow!("admin: no randomness for a token: {e}"))?;
        let token = format!("th_{}", hex::encode(secret));
        let record = TenantRecord {
            name: request.name.clone(),
            token_sha256: sha256_hex(token.as_bytes()),
            limits,
        };
        platform.write(vec![Entry::Tenant(
            request.name.clone(),
            Some(record.clone()),
        )])?;
        tracing::info!(tenant = %record.name, "admin: tenant created");
        Ok((
            StatusCode::CREATED,
            Json(json!({ "name": record.name, "token": token, "limits": record.limits })),
        )
            .into_response())
    })
    .await
}

fn check_limits(limits: &Limits) -> Result<(), ApiError> {
    match limits.zero_field() {
        Some(field) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("limits.{field} is 0; it must be at least 1"),
        )),
        None => Ok(()),
    }
}

async fn list_tenants(State(platform): State<Arc<Platform>>, headers: HeaderMap) -> Reply {
    admin_only(&platform, &headers)?;
    let tenants: Vec<_> = platform
        .registry()
        .tenants
        .values()
        .map(|t| {
            json!({
                "name": t.name,
                "limits": t.limits,
                "counters": platform.tenant_stats(&t.name),
            })
        })
        .collect();
    Ok(Json(tenants).into_response())
}

async fn set_limits(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Json(limits): Json<Limits>,
) -> Reply {
    admin_only(&platform, &headers)?;
    check_limits(&limits)?;
    blocking(move || {
        let _change = platform.change_lock();
        let Some(mut record) = platform.registry().tenants.get(&tenant).cloned() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("tenant {tenant:?} not found"),
            ));
        };
        record.limits = limits;
        platform.write(vec![Entry::Tenant(tenant.clone(), Some(record.clone()))])?;
        tracing::info!(tenant = %tenant, limits = ?record.limits, "admin: tenant limits set");
        Ok(Json(json!({ "name": record.name, "limits": record.limits })).into_response())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    manifest: Manifest,
    /// The component or core module, base64.
    component: String,
}

/// The description of one version in replies.
#[derive(Serialize)]
struct VersionView {
    agent: String,
    version: u32,
    status: String,
    deployed: bool,
    size: u64,
    sha256: String,
    core_module: bool,
    imports: Vec<String>,
    manifest: Manifest,
    counters: crate::agent::VersionStats,
}

fn version_view(platform: &Platform, tenant: &str, record: &VersionRecord) -> VersionView {
    let registry = platform.registry();
    let deployed = registry
        .deployments
        .get(&(tenant.to_owned(), record.agent.clone()))
        .is_some_and(|d| d.version == record.number);
    drop(registry);
    VersionView {
        agent: record.agent.clone(),
        version: record.number,
        status: platform
            .status(tenant, &record.agent, record.number)
            .to_string(),
        deployed,
        size: record.size,
        sha256: record.sha256.clone(),
        core_module: record.core_module,
        imports: record.imports.clone(),
        manifest: record.manifest.clone(),
        counters: platform.stats(tenant, &record.agent, &record.label()),
    }
}

async fn upload(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    upload: Result<Json<Upload>, JsonRejection>,
) -> Reply {
    let tenant = tenant_only(&platform, &headers)?;
    let Json(upload) = upload.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "the upload is larger than {} bytes; a component may be at most {} MiB (admin.max_component_mib)",
                    platform.max_request_bytes(),
                    platform.max_component_bytes / (1024 * 1024)
                ),
            )
        } else {
            ApiError::new(status, format!("the upload is not valid JSON of the form {{\"manifest\": {{...}}, \"component\": \"<base64>\"}}: {}", rejection.body_text()))
        }
    })?;
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    check_runnable(&upload.manifest, &tenant)
        .map_err(|m| unprocessable(format!("manifest: {m}")))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(upload.component.trim())
        .map_err(|e| unprocessable(format!("component: not base64: {e}")))?;
    let max = platform.max_component_bytes;
    if bytes.len() as u64 > max {
        return Err(unprocessable(format!(
            "component: {} bytes, above the limit of {max} bytes; build it in release mode without debug info",
            bytes.len()
        )));
    }
    let checked = crate::agent::check_component(&bytes)
        .map_err(|e| unprocessable(format!("component: {e:#}")))?;
    blocking(move || {
        let _change = platform.change_lock();
        let agent = upload.manifest.name.clone();
        let number = platform
            .registry()
            .versions_of(&tenant.name, &agent)
            .last()
            .map_or(1, |v| v.number + 1);
        let sha256 = platform.put_blob(&bytes)?;
        let record = VersionRecord {
            tenant: tenant.name.clone(),
            agent: agent.clone(),
            number,
            manifest: upload.manifest,
            sha256,
            size: bytes.len() as u64,
            imports: checked.imports,
            core_module: checked.core_module,
            uploaded_ms: now_ms(),
        };
        platform.write(vec![Entry::Version(
            (tenant.name.clone(), agent.clone(), number),
            Some(record.clone()),
        )])?;
        tracing::info!(tenant = %tenant.name, agent = %agent, version = number, size = record.size, "admin: version uploaded; compiling it in the background");
        platform.compile_in_background(&record, bytes);
        Ok((StatusCode::CREATED, Json(version_view(&platform, &tenant.name, &record))).into_response())
    })
    .await
}

async fn list_agents(State(platform): State<Arc<Platform>>, headers: HeaderMap) -> Reply {
    let tenant = tenant_only(&platform, &headers)?;
    let registry = platform.registry();
    let mut agents: std::collections::BTreeMap<String, (Vec<u32>, Option<DeploymentRecord>)> =
        Default::default();
    for ((owner, agent, number), _) in &registry.versions {
        if owner == &tenant.name {
            agents.entry(agent.clone()).or_default().0.push(*number);
        }
    }
    for ((owner, agent), deployment) in &registry.deployments {
        if owner == &tenant.name {
            agents.entry(agent.clone()).or_default().1 = Some(deployment.clone());
        }
    }
    let list: Vec<_> = agents
        .into_iter()
        .map(|(name, (versions, deployment))| {
            json!({
                "name": name,
                "versions": versions,
                "deployed": deployment.as_ref().map(|d| d.version),
                "history": deployment.as_ref().map(|d| d.history.clone()).unwrap_or_default(),
                "reason": deployment.as_ref().map(|d| d.reason.clone()),
            })
        })
        .collect();
    Ok(Json(list).into_response())
}

fn find_version(
    platform: &Platform,
    tenant: &str,
    agent: &str,
    number: u32,
) -> Result<VersionRecord, ApiError> {
    platform
        .registry()
        .versions
        .get(&(tenant.to_owned(), agent.to_owned(), number))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("agent {agent:?} has no version {number}; `tablehost agent list` shows the versions"),
            )
        })
}

async fn show_version(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    Path((agent, number)): Path<(String, u32)>,
) -> Reply {
    let tenant = tenant_only(&platform, &headers)?;
    let record = find_version(&platform, &tenant.name, &agent, number)?;
    Ok(Json(version_view(&platform, &tenant.name, &record)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(default)]
    version: Option<u32>,
}

async fn deploy(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Json(target): Json<Target>,
) -> Reply {
    let tenant = tenant_only(&platform, &headers)?;
    let number = target.version.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name the version to deploy: {\"version\": n}",
        )
    })?;
    blocking(move || {
        let _change = platform.change_lock();
        change_deployment(&platform, &tenant, &agent, number, Change::Deploy)
    })
    .await
}

async fn rollback(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Json(target): Json<Target>,
) -> Reply {
    let tenant = tenant_only(&platform, &headers)?;
    blocking(move || {
        let _change = platform.change_lock();
        let current = platform
            .registry()
            .deployments
            .get(&(tenant.name.clone(), agent.clone()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("agent {agent:?} is not deployed"),
                )
            })?;
        let number = match target.version {
            Some(number) => number,
            None => *current.history.last().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "agent {agent:?} has no earlier deployment to roll back to; name a version"
                    ),
                )
            })?,
        };
        change_deployment(&platform, &tenant, &agent, number, Change::Rollback)
    })
    .await
}

/// The kind of a deployment change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A new version runs; the current one goes onto the history.
    Deploy,
    /// An earlier version runs again; the current one is abandoned and
    /// stays off the history, so a second rollback goes further back.
    Rollback,
}

fn change_deployment(
    platform: &Platform,
    tenant: &TenantRecord,
    agent: &str,
    number: u32,
    change: Change,
) -> Reply {
    let reason = match change {
        Change::Deploy => "deployed",
        Change::Rollback => "rolled back by request",
    };
    let record = find_version(platform, &tenant.name, agent, number)?;
    match platform.status(&tenant.name, agent, number) {
        VersionStatus::Ready => {}
        VersionStatus::Compiling => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("version {number} of {agent:?} is still compiling; try again when its status is ready"),
            ))
        }
        VersionStatus::Failed(error) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("version {number} of {agent:?} cannot run: {error}"),
            ))
        }
    }
    let previous = platform
        .registry()
        .deployments
        .get(&(tenant.name.clone(), agent.to_owned()))
        .cloned();
    let mut history = previous
        .as_ref()
        .map(|d| d.history.clone())
        .unwrap_or_default();
    if let Some(previous) = &previous {
        if previous.version == number {
            return Ok(Json(previous).into_response());
        }
        history.retain(|&n| n != number);
        if change == Change::Deploy {
            history.push(previous.version);
        }
    }
    let deployment = DeploymentRecord {
        tenant: tenant.name.clone(),
        agent: agent.to_owned(),
        version: record.number,
        history,
        reason: reason.to_owned(),
        changed_ms: now_ms(),
    };
    platform.write(vec![Entry::Deployment(
        (tenant.name.clone(), agent.to_owned()),
        Some(deployment.clone()),
    )])?;
    tracing::info!(tenant = %tenant.name, agent, version = number, reason, "admin: deployment changed");
    Ok(Json(deployment).into_response())
}

async fn remove_agent(
    State(platform): State<Arc<Platform>>,
    headers: HeaderMap,
    Path(agent): Path<String>,
) -> Reply {
    let tenant = tenant_only(&platform, &headers)?;
    blocking(move || {
        let _change = platform.change_lock();
        let versions: Vec<u32> = platform
            .registry()
            .versions_of(&tenant.name, &agent)
            .iter()
            .map(|v| v.number)
            .collect();
        if versions.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("agent {agent:?} not found"),
            ));
        }
        let mut entries = vec![Entry::Deployment(
            (tenant.name.clone(), agent.clone()),
            None,
        )];
        entries.extend(
            versions
                .iter()
                .map(|&n| Entry::Version((tenant.name.clone(), agent.clone(), n), None)),
        );
        platform.write(entries)?;
        tracing::info!(tenant = %tenant.name, agent = %agent, "admin: agent removed");
        Ok(Json(json!({ "removed": agent, "versions": versions })).into_response())
    })
    .await
}
