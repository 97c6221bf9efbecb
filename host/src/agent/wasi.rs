//! The WASI surface of an agent.
//!
//! The linker carries the WASI 0.2 interfaces, because components built by
//! componentize-py, jco and the Rust toolchain import them whether they use
//! them or not. What those imports can reach is set per instance here:
//!
//! - no preopened directories, environment variables or arguments;
//! - no network: TCP, UDP and name lookup are off and no address passes;
//! - clocks that stand still at zero, unless the agent is granted clocks;
//! - stdin at end of file;
//! - stdout and stderr go to the host's log, one line per record, tagged
//!   with the agent's name; the last stderr line is kept for trap messages.
//!
//! Random numbers are real: language runtimes seed hash maps with them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use wasmtime::component::Linker;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use super::host::HostState;
use crate::config::WasiGrants;

/// The maximum length of a line of agent output logged as one record.
/// Longer lines are split.
const MAX_LINE: usize = 4096;

/// Adds the WASI interfaces to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)
        .map_err(|e| anyhow!("agent: failed to link WASI: {e}"))
}

/// Builds the WASI context of one instance of an agent.
pub(super) fn context(output: &AgentOutput, grants: &WasiGrants) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(output.stream(Stream::Stdout))
        .stderr(output.stream(Stream::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if !grants.clocks {
        builder
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock);
    }
    builder.build()
}

/// A clock that always reads zero.
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The stdout and stderr of one agent instance, logged line by line.
#[derive(Clone)]
pub(super) struct AgentOutput {
    agent: Arc<str>,
    state: Arc<Mutex<OutputState>>,
}

#[derive(Default)]
struct OutputState {
    /// Bytes of an unfinished line, per stream.
    pending: [Vec<u8>; 2],
    /// The last complete non-empty stderr line.
    last_stderr: Option<String>,
}

impl AgentOutput {
    pub(super) fn new(agent: &str) -> Self {
        Self {
            agent: agent.into(),
            state: Default::default(),
        }
    }

    fn stream(&self, stream: Stream) -> LogStream {
        LogStream {
            output: self.clone(),
            stream,
        }
    }

    /// Returns the last line the agent wrote to stderr, including an
    /// unfinished one, for a trap message. A Rust guest's panic prints its
    /// message and then a hint about `RUST_BACKTRACE`; the hint is skipped.
    pub(super) fn last_stderr_line(&self) -> Option<String> {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending[1]);
        if !pending.is_empty() {
            self.line(Stream::Stderr, &pending, &mut state);
        }
        state.last_stderr.clone()
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut state = self.lock();
        let index = stream as usize;
        let mut pending = std::mem::take(&mut state.pending[index]);
        pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            self.line(stream, &pending[start..start + end], &mut state);
            start += end + 1;
        }
        let mut rest = pending.split_off(start);
        while rest.len() >= MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.line(stream, &rest, &mut state);
            rest = tail;
        }
        state.pending[index] = rest;
    }

    fn line(&self, stream: Stream, bytes: &[u8], state: &mut OutputState) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return;
        }
        let agent = &*self.agent;
        match stream {
            Stream::Stdout => tracing::info!(agent, stream = stream.name(), "{text}"),
            Stream::Stderr => {
                tracing::warn!(agent, stream = stream.name(), "{text}");
                if !text.starts_with("note:") {
                    state.last_stderr = Some(text.trim().to_owned());
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One of an instance's output streams.
struct LogStream {
    output: AgentOutput,
    stream: Stream,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncLog(self.output.clone(), self.stream))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogStream {
            output: self.output.clone(),
            stream: self.stream,
        })
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.stream, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

/// The same stream for WASI 0.3's asynchronous writers.
struct AsyncLog(AgentOutput, Stream);

impl tokio::io::AsyncWrite for AsyncLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.write(self.1, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_are_split_and_the_last_is_kept() {
        let output = AgentOutput::new("a");
        output.write(Stream::Stderr, b"first\nsecond ");
        output.write(Stream::Stderr, b"half\nnote: hint\n");
        assert_eq!(output.last_stderr_line().as_deref(), Some("second half"));
        output.write(Stream::Stderr, b"unfinished");
        assert_eq!(output.last_stderr_line().as_deref(), Some("unfinished"));
    }

    #[test]
    fn long_lines_are_cut_into_records() {
        let output = AgentOutput::new("a");
        output.write(Stream::Stdout, &vec![b'x'; MAX_LINE * 2 + 10]);
        assert_eq!(output.lock().pending[0].len(), 10);
    }
}
