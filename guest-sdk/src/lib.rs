//! Rust SDK for tablehost agents.
//!
//! An agent is a WebAssembly component that the tablehost host runs once
//! per batch of records from its source topics. This crate wraps the
//! `tablehost:agent@0.1.0` WIT world (`wit/agent.wit` in the repository) in
//! Rust types:
//!
//! - [`Event`]: one source record, with helpers such as
//!   [`Event::key_str`] and [`Event::value_json`].
//! - [`Table`]: a typed view of a host table. Keys are encoded by the
//!   [`Key`] trait and values by a [`Codec`] ([`Json`] by default,
//!   [`Postcard`] for compact binary, [`Raw`] for bytes as they are).
//!   [`Table::entries`], [`Table::range`] and [`Table::prefix`] iterate
//!   over a partition in key order.
//! - [`SetTable`]: a set of members per key, one table entry per member, so
//!   adds and discards, and the union, difference and intersection built
//!   on them, are changelog records replayed in order.
//! - [`WindowedTable`]: a value per key and time [`Window`], for tumbling,
//!   hopping and sliding windows over event time.
//!   [`WindowedTable::update`] writes to every open window of an event.
//! - [`output`]: functions that send records to the agent's output topics.
//! - [`log`] and the [`trace!`], [`debug!`], [`info!`], [`warn!`] and
//!   [`error!`] macros: lines in the host's log, tagged with the agent.
//! - [`Agent`] and [`export_agent!`]: the per-event entry point, the
//!   optional close handler [`Agent::on_window_close`] that receives each
//!   [`ClosedWindow`], and the macro that exports both as the component's
//!   `handler` and `window-close`.
//!
//! Every fallible call returns [`Error`], which names the table, topic or
//! event part that failed.
//!
//! # A complete agent
//!
//! The agent below counts words in each record value per source partition
//! and sends a record to `word-alerts` the first time a word reaches 100.
//! Its crate is a library built as a C dynamic library, which for
//! `wasm32-wasip2` is a component:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! tablehost-guest = { path = "../../guest-sdk" }
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` then writes the component
//! to `target/wasm32-wasip2/release/<crate>.wasm`. The agent's entry in the
//! host config must declare the table `word-counts` under `tables` and the
//! topic `word-alerts` under `outputs`.
//!
//! ```
//! use tablehost_guest::{export_agent, info, output, Agent, Error, Event, Table};
//!
//! struct WordCount;
//!
//! impl Agent for WordCount {
//!     fn handle(event: &Event) -> Result<(), Error> {
//!         // Tables must be declared in the agent's configuration.
//!         let counts: Table<String, u64> = Table::open("word-counts")?;
//!
//!         for word in event.value_str()?.split_whitespace() {
//!             let count = counts.get_or_default(word)? + 1;
//!             counts.set(word, &count)?;
//!
//!             if count == 100 {
//!                 info!("word {word:?} reached 100 at offset {}", event.offset);
//!                 output::send_json("word-alerts", Some(word.as_bytes()), &count)?;
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_agent!(WordCount);
//! ```
//!
//! # Windowed tables
//!
//! A windowed table keeps a value per key and time window. Its entry in
//! the host config chooses the window type and size in milliseconds. The
//! types are tumbling (back to back), hopping (overlapping, one every
//! step) and sliding (the window that ends with each event). The entry
//! also sets how long a window stays open after its end. Event time is the
//! record timestamp or an integer field of the JSON value.
//!
//! Each partition's stream time is the largest event time seen in it. When
//! a window's end plus the table's expiry is no longer after the stream
//! time, the window closes. The host then calls [`Agent::on_window_close`]
//! once per key with the window's final value, and deletes the window.
//!
//! The agent below counts page views per page and minute in the windowed
//! table `views-per-minute`, and sends each minute's count to
//! `minute-views` when the minute closes. Its host config entry must
//! declare both, with tumbling windows of 60,000 ms.
//!
//! ```
//! use tablehost_guest::{export_agent, output, Agent, ClosedWindow, Error, Event, WindowedTable};
//!
//! struct PageViews;
//!
//! impl Agent for PageViews {
//!     fn handle(event: &Event) -> Result<(), Error> {
//!         let views: WindowedTable<str, u64> = WindowedTable::open("views-per-minute")?;
//!
//!         // One view more in every open window of the event's time. An
//!         // event for a window that has closed counts nowhere.
//!         views.update_or_default(event, event.key_str()?, |count| count + 1)?;
//!         Ok(())
//!     }
//!
//!     fn on_window_close(closed: &ClosedWindow) -> Result<(), Error> {
//!         let page = closed.key_str()?;
//!         let count: u64 = closed.value_json()?;
//!         let minute = closed.window.start / 60_000;
//!
//!         output::send_json("minute-views", Some(page.as_bytes()), &(minute, count))
//!     }
//! }
//!
//! export_agent!(PageViews);
//! ```
//!
//! # Native builds
//!
//! The crate also compiles for the build machine, so that an agent's pure
//! code can have ordinary unit tests. The host imports are not available
//! there: any call that reaches the host (opening a table, sending,
//! logging) panics outside a WebAssembly component.

#![warn(missing_docs)]

mod agent;
mod codec;
mod error;
mod event;
mod key;
pub mod log;
pub mod output;
mod set_table;
mod table;
mod window;
mod windowed_table;

pub use agent::Agent;
pub use codec::{Codec, CodecError, Json, Postcard, Raw};
pub use error::Error;
pub use event::{Event, Header};
pub use key::Key;
pub use output::SendError;
pub use set_table::SetTable;
pub use table::{Entries, Table, TableError};
pub use window::{ClosedWindow, Window};
pub use windowed_table::WindowedTable;

/// Bindings generated by `wit-bindgen` for the `windowed-agent` world,
/// which is the `agent` world plus the `window-close` export.
///
/// Public only because [`export_agent!`] expands in the agent's crate and
/// must reach the generated export macro and `Guest` traits from there. Use
/// the wrappers in this crate instead: this module is not a stable API.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        // Every agent exports `window-close`. The host calls it only for
        // windowed tables, and `Agent::on_window_close` does nothing unless
        // the agent overrides it.
        world: "windowed-agent",
        // The WIT package lives at the workspace root, shared with the host,
        // not in the default `wit/` folder beside this crate's Cargo.toml.
        path: "../wit",
        // The export macro is invoked by `export_agent!` in the agent's
        // crate, so it must be `#[macro_export]` and not `pub(crate)`. This
        // also moves the custom section that describes the world's exports
        // into the macro's expansion, so only a crate that calls
        // `export_agent!` exports `handler` and `window-close`.
        pub_export_macro: true,
        // The short form `export_world!(T)` resolves the generated types
        // through this path. The default, `self`, only works inside this
        // module. `export_agent!` passes `$crate::bindings` explicitly
        // instead, which also works when an agent renames this dependency.
        default_bindings_module: "tablehost_guest::bindings",
        // With `pub_export_macro` the generated macro is public. The
        // default name `export` would read as this SDK's entry point, which
        // is `export_agent!`, so the generated one gets a name that says it
        // exports the world's raw interfaces.
        export_macro_name: "export_world",
    });
}

/// Items used by the expansion of this crate's macros. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::agent::{close_window, handle_batch};
    pub use crate::bindings::exports::tablehost::agent::handler::Guest as HandlerGuest;
    pub use crate::bindings::exports::tablehost::agent::window_close::Guest as WindowCloseGuest;
    pub use crate::bindings::tablehost::agent::tables::Window as WitWindow;
    pub use std::format;
    pub use std::string::String;
    pub use std::vec::Vec;
}

/// Exports an [`Agent`] implementation as the component's `handler` and
/// `window-close`.
///
/// Invoke it once per agent crate, at module level, with the type that
/// implements [`Agent`]. The generated WIT `handle` function calls
/// [`Agent::handle`] for each event of the batch in order and stops at the
/// first error. The host then receives `Err` with a message that names the
/// event's topic, partition and offset followed by the error, for example
/// `failed to handle event at topic "flights" partition 0 offset 17:
/// invalid event value: ...`.
///
/// The generated WIT `closed` function calls [`Agent::on_window_close`]. Its
/// error message names the window, key and table, for example
/// `failed to handle close of window [0, 60000) of key "home" in table
/// "views": ...`.
///
/// ```
/// use tablehost_guest::{export_agent, Agent, Error, Event};
///
/// struct Noop;
///
/// impl Agent for Noop {
///     fn handle(_event: &Event) -> Result<(), Error> {
///         Ok(())
///     }
/// }
///
/// export_agent!(Noop);
/// ```
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            // The generated export macro needs an identifier, not a path or
            // a generic type. A local type also lets the impl below satisfy
            // the orphan rule whatever `$agent` is.
            struct TablehostAgentExport;

            impl $crate::__private::HandlerGuest for TablehostAgentExport {
                fn handle(
                    events: $crate::__private::Vec<$crate::Event>,
                ) -> ::core::result::Result<(), $crate::__private::String> {
                    $crate::__private::handle_batch::<$agent>(events)
                }
            }

            impl $crate::__private::WindowCloseGuest for TablehostAgentExport {
                fn closed(
                    table: $crate::__private::String,
                    key: $crate::__private::Vec<u8>,
                    window: $crate::__private::WitWindow,
                    value: $crate::__private::Vec<u8>,
                ) -> ::core::result::Result<(), $crate::__private::String> {
                    $crate::__private::close_window::<$agent>(table, key, window, value)
                }
            }

            $crate::bindings::export_world!(
                TablehostAgentExport with_types_in $crate::bindings
            );
        };
    };
}
