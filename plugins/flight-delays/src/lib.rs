//! Flight delay statistics per origin airport.
//!
//! Each event value is a JSON object describing one flight:
//!
//! ```json
//! {"date":"2001-01-01 00:01:00","delay":33,"distance":2176,"origin":"LAS","destination":"PHL"}
//! ```
//!
//! The agent reads two fields: `origin`, a string, and `delay`, an integer
//! number of minutes (negative for an early departure). Other fields are
//! ignored, so a null or missing `date` does not stop the count. A value
//! that is not a JSON object, or whose `origin` or `delay` is missing or of
//! another type, fails the event with an error that names the field. The
//! SDK's batch loop adds the event's topic, partition and offset to the
//! message.
//!
//! For each flight the agent:
//!
//! - updates table `delays_by_origin`, keyed by the origin as raw UTF-8
//!   bytes, with the JSON value `{"flights":n,"delay_total":s,"delay_max":m}`
//!   of integers. The first flight of an origin sets `delay_max`, even when
//!   its delay is negative.
//! - sends a flight with a delay of at least 180 minutes to topic
//!   `long-delays`, with the origin as key and the event's value bytes
//!   unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tablehost_guest::{export_agent, output, Agent, Error, Event, Table};

/// The table of per-origin statistics.
const DELAYS_TABLE: &str = "delays_by_origin";

/// The output topic for long delays.
const LONG_DELAYS_TOPIC: &str = "long-delays";

/// The minimum delay in minutes that counts as a long delay.
const LONG_DELAY_MINUTES: i64 = 180;

/// The fields of a flight that the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flight {
    origin: String,
    delay: i64,
}

/// The value stored per origin in `delays_by_origin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OriginStats {
    flights: u64,
    delay_total: i64,
    delay_max: i64,
}

impl OriginStats {
    /// Returns the statistics of an origin whose first flight has `delay`.
    fn first(delay: i64) -> Self {
        Self {
            flights: 1,
            delay_total: delay,
            delay_max: delay,
        }
    }

    /// Adds one flight with `delay`.
    fn add(&mut self, delay: i64) -> Result<(), Error> {
        self.flights += 1;
        self.delay_total = self
            .delay_total
            .checked_add(delay)
            .ok_or_else(|| Error::msg("delay_total overflows a 64-bit integer"))?;
        self.delay_max = self.delay_max.max(delay);
        Ok(())
    }
}

struct FlightDelays;

impl Agent for FlightDelays {
    fn handle(event: &Event) -> Result<(), Error> {
        let flight = parse_flight(event)?;

        let table: Table<String, OriginStats> = Table::open(DELAYS_TABLE)?;
        let stats = match table.get(flight.origin.as_str())? {
            Some(mut stats) => {
                stats.add(flight.delay)?;
                stats
            }
            None => OriginStats::first(flight.delay),
        };
        table.set(flight.origin.as_str(), &stats)?;

        if flight.delay >= LONG_DELAY_MINUTES {
            output::send(
                LONG_DELAYS_TOPIC,
                Some(flight.origin.as_bytes()),
                event.value.as_deref(),
            )?;
        }
        Ok(())
    }
}

export_agent!(FlightDelays);

/// Reads and checks the flight in the event's value.
fn parse_flight(event: &Event) -> Result<Flight, Error> {
    let object: Map<String, Value> = event.value_json()?;

    Ok(Flight {
        origin: string_field(&object, "origin")?.to_string(),
        delay: integer_field(&object, "delay")?,
    })
}

fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Error> {
    object
        .get(name)
        .ok_or_else(|| Error::msg(format!("invalid flight: field `{name}` is missing")))
}

fn string_field<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, Error> {
    let value = field(object, name)?;
    value.as_str().ok_or_else(|| {
        Error::msg(format!(
            "invalid flight: field `{name}` must be a string, found {value}"
        ))
    })
}

fn integer_field(object: &Map<String, Value>, name: &str) -> Result<i64, Error> {
    let value = field(object, name)?;
    value.as_i64().ok_or_else(|| {
        Error::msg(format!(
            "invalid flight: field `{name}` must be an integer, found {value}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: &str) -> Event {
        Event {
            topic: "flights".to_string(),
            partition: 0,
            offset: 5,
            timestamp_ms: None,
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: Vec::new(),
        }
    }

    const FLIGHT: &str = r#"{"date":"2001-01-01 00:01:00","delay":33,"distance":2176,"origin":"LAS","destination":"PHL"}"#;

    fn parse_error(value: &str) -> String {
        parse_flight(&event(value)).unwrap_err().to_string()
    }

    #[test]
    fn parse_reads_origin_and_delay() {
        let flight = parse_flight(&event(FLIGHT)).unwrap();

        assert_eq!(
            flight,
            Flight {
                origin: "LAS".to_string(),
                delay: 33
            }
        );
    }

    #[test]
    fn parse_accepts_negative_delay() {
        let value = FLIGHT.replace(r#""delay":33"#, r#""delay":-7"#);

        assert_eq!(parse_flight(&event(&value)).unwrap().delay, -7);
    }

    #[test]
    fn parse_ignores_other_fields() {
        let flight = parse_flight(&event(r#"{"origin":"SFO","delay":0,"date":null}"#)).unwrap();

        assert_eq!(
            flight,
            Flight {
                origin: "SFO".to_string(),
                delay: 0
            }
        );
    }

    #[test]
    fn parse_names_missing_field() {
        for name in ["delay", "origin"] {
            let mut object: Map<String, Value> = serde_json::from_str(FLIGHT).unwrap();
            object.remove(name);
            let value = serde_json::to_string(&object).unwrap();

            assert_eq!(
                parse_error(&value),
                format!("invalid flight: field `{name}` is missing")
            );
        }
    }

    #[test]
    fn parse_rejects_fractional_delay() {
        let value = FLIGHT.replace(r#""delay":33"#, r#""delay":33.5"#);

        assert_eq!(
            parse_error(&value),
            "invalid flight: field `delay` must be an integer, found 33.5"
        );
    }

    #[test]
    fn parse_rejects_numeric_origin() {
        let value = FLIGHT.replace(r#""origin":"LAS""#, r#""origin":12"#);

        assert_eq!(
            parse_error(&value),
            "invalid flight: field `origin` must be a string, found 12"
        );
    }

    #[test]
    fn parse_rejects_invalid_json() {
        assert_eq!(
            parse_error("{\"delay\": 3"),
            "invalid event value: failed to decode with json: \
             EOF while parsing an object at line 1 column 11"
        );
    }

    #[test]
    fn parse_rejects_non_object() {
        assert!(parse_error("[1, 2]").starts_with(
            "invalid event value: failed to decode with json: invalid type: sequence"
        ));
    }

    #[test]
    fn first_flight_sets_negative_max() {
        assert_eq!(
            OriginStats::first(-12),
            OriginStats {
                flights: 1,
                delay_total: -12,
                delay_max: -12
            }
        );
    }

    #[test]
    fn add_updates_total_and_max() {
        let mut stats = OriginStats::first(-12);

        stats.add(40).unwrap();
        stats.add(5).unwrap();

        assert_eq!(
            stats,
            OriginStats {
                flights: 3,
                delay_total: 33,
                delay_max: 40
            }
        );
    }

    #[test]
    fn add_rejects_total_overflow() {
        let mut stats = OriginStats::first(i64::MAX);

        assert!(stats.add(1).is_err());
    }

    #[test]
    fn stats_json_shape() {
        let json = serde_json::to_string(&OriginStats::first(33)).unwrap();

        assert_eq!(json, r#"{"flights":1,"delay_total":33,"delay_max":33}"#);
    }
}
