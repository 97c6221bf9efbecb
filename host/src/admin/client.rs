//! A blocking client of the admin API, used by `tablehost agent` and
//! `tablehost tenant`.

use anyhow::{bail, Context};
use serde_json::Value;

/// The admin API at one address, with one token.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// Creates a client of the API at `base` (such as
    /// `http://127.0.0.1:7070`) that sends `token`.
    pub fn new(base: &str, token: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(300)))
            .build()
            .new_agent();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            agent,
        }
    }

    /// Sends a request and returns the JSON reply.
    ///
    /// # Errors
    ///
    /// Fails when the API cannot be reached, or replies with an error,
    /// whose message is passed on.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            ("POST", Some(body)) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .send_json(body),
            ("PUT", Some(body)) => self
                .agent
                .put(&url)
                .header("authorization", &auth)
                .send_json(body),
            _ => bail!("admin client: unsupported request {method} {path}"),
        };
        // The server replies 413 to an oversized body, stops reading it and
        // closes the connection, which fails the client's send.
        if let Err(ureq::Error::Io(error)) = &response {
            if body.is_some()
                && matches!(
                    error.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                )
            {
                bail!(
                    "{method} {path}: the admin API closed the connection during the request ({error}); \
                     the request is probably larger than the server accepts (admin.max_component_mib)"
                );
            }
        }
        let mut response = response.with_context(|| {
            format!("cannot reach the admin API at {}; is `tablehost serve` running there? (--admin or TABLEHOST_ADMIN_URL)", self.base)
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .context("admin client: cannot read the reply")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{method} {path}: {} {message}", status.as_u16());
        }
        Ok(value)
    }
}
