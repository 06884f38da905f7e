//! The inspectd MQTT v1 contract, shared by the edge daemon (producer) and the plant supervisor
//! (consumer): the typed messages ([`v1`]), topic names ([`topic`]), the sizes a device accepts
//! ([`limits`]) and RFC 3339 time as both ends write and read it. With the `client` feature, the
//! broker settings and process glue of a long-running client.

pub mod limits;
pub mod timefmt;
pub mod topic;
pub mod v1;

#[cfg(feature = "client")]
pub mod client;
