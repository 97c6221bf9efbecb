//! Lines in the host's log, tagged with the agent by the host.
//!
//! The macros [`trace!`](crate::trace), [`debug!`](crate::debug),
//! [`info!`](crate::info), [`warn!`](crate::warn) and
//! [`error!`](crate::error) take `format!` arguments. The WIT `log`
//! interface specifies that the host cuts a message longer than 4096 bytes
//! to that length, and that logging never fails.
//! Every line is a call into the host, so avoid logging per event on a hot
//! path.

pub use crate::bindings::tablehost::agent::log::Level;

use crate::bindings::tablehost::agent::log as wit;

/// Writes `message` to the host log at `level`.
pub fn write(level: Level, message: &str) {
    wit::log(level, message);
}

/// Writes a `format!` message to the host log at level `trace`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Trace, &$crate::__private::format!($($arg)+))
    };
}

/// Writes a `format!` message to the host log at level `debug`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Debug, &$crate::__private::format!($($arg)+))
    };
}

/// Writes a `format!` message to the host log at level `info`.
///
/// ```no_run
/// let origin = "LAS";
/// tablehost_guest::info!("first flight from {origin}");
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Info, &$crate::__private::format!($($arg)+))
    };
}

/// Writes a `format!` message to the host log at level `warn`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Warn, &$crate::__private::format!($($arg)+))
    };
}

/// Writes a `format!` message to the host log at level `error`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log::write($crate::log::Level::Error, &$crate::__private::format!($($arg)+))
    };
}
