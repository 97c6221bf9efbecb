//! The `tablehost` binary: parses the command line, sets up logging and
//! reports errors.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // Logs go to stderr so stdout carries only results (`table dump`).
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = tablehost::cli::Cli::parse();
    match tablehost::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tablehost: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
