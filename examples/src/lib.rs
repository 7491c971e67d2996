//! The three scenarios of antre's seed, each a library function so the
//! binaries (`src/bin/`) and the integration test (`tests/`) run the same
//! code:
//!
//! - [`payments`]: point-to-point payment processing;
//! - [`flight_delays`]: flight-delay notices fanned out to five teams;
//! - [`shop_events`]: e-commerce events routed by topic;
//! - [`order_history`]: the order events kept in a stream, replayed from
//!   the start by a new analytics service.

pub mod flight_delays;
pub mod order_history;
pub mod payments;
pub mod shop_events;
pub mod support;
