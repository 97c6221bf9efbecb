//! The flights demo's independent check: figures computed straight from
//! the Parquet file, without Kafka, agents or tables, to compare the
//! streaming result with.

pub mod reference;
