//! `tablehost serve`: the admin API and a worker running the deployed
//! agents.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::config::Config;
use crate::serve::{serve as serve_platform, ServeOptions};
use crate::worker::Shutdown;

/// Arguments of `tablehost serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The application config (TOML); its `[admin]` section sets the API.
    #[arg(long, short)]
    config: PathBuf,
}

pub(super) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let kafka = Arc::new(super::run::connect(&config)?);
    // A closed stdout (as behind `| head`) must not stop the server, so
    // these lines ignore write errors.
    if kafka.embedded_cluster().is_some() {
        let _ = writeln!(
            std::io::stdout(),
            "embedded cluster at {} (its topics live only as long as this process)",
            kafka.bootstrap_servers()
        );
    }
    let shutdown = Arc::new(Shutdown::default());
    super::run::install_signal_handler(shutdown.clone())?;
    let options = ServeOptions {
        admin_token: std::env::var("TABLEHOST_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
        on_listen: Some(Arc::new(|address| {
            let _ = writeln!(std::io::stdout(), "admin API at http://{address}");
        })),
        on_platform: None,
    };
    serve_platform(&config, kafka, shutdown, options)
}
