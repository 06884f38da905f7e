//! inspectd: an edge inspection daemon. It runs a (quantized) CNN on the CPU with tract,
//! explains every prediction with a class activation map computed by its own reverse-mode pass
//! over the model head, and publishes verdicts. See `DESIGN.md` for the architecture.

pub mod broker;
pub mod cam;
#[cfg(feature = "camera")]
pub mod camera;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod graph;
pub mod health;
pub mod heatmap;
pub mod http;
pub mod model;
pub mod mqtt;
pub mod pipeline;
pub mod sdnotify;
pub mod source;
pub mod spool;
pub mod spooler;
pub mod supervisor;
pub mod tasks;
pub mod tensor;
pub mod timefmt;
pub mod validate;
pub mod verdict;
