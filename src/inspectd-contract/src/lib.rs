//! The inspectd MQTT v1 contract, shared by the edge daemon (producer) and the plant supervisor
//! (consumer): RFC 3339 time as both ends write and read it. With the `client` feature, the
//! broker settings and process glue of a long-running client.

pub mod timefmt;

#[cfg(feature = "client")]
pub mod client;
