//! tablehost: durable, queryable tables for stream-processing agents that
//! run as WebAssembly components.
//!
//! A record travels through the host like this (ARCHITECTURE.md has the
//! full map):
//!
//! 1. [`worker`] polls the record from a source topic ([`kafka`]).
//! 2. It hands a batch of records of one partition to each agent that
//!    consumes the topic ([`agent`]), a wasmtime component instance.
//! 3. The agent reads and writes [`table`]s; writes collect in each table's
//!    write cache.
//! 4. At commit the [`manager`] writes the cached changes to each table's
//!    changelog topic, then to its [`store`] with the changelog offset, then
//!    commits the source offsets.
//! 5. On start and on every partition assignment, [`recovery`] replays the
//!    changelog into the store before the partition's records reach an
//!    agent.

#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod changelog;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod feed;
pub mod follower;
pub mod kafka;
pub mod load;
pub mod manager;
pub mod recovery;
pub mod registry;
pub mod serve;
pub mod store;
pub mod table;
pub mod worker;
