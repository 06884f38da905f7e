//! inspectd: an edge inspection daemon. It runs a (quantized) CNN on the CPU with tract,
//! explains every prediction with a class activation map computed by its own reverse-mode pass
//! over the model head, and publishes verdicts. See `DESIGN.md` for the architecture.

pub mod broker;
#[cfg(feature = "camera")]
pub mod camera;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod gate;
pub mod gige;
pub mod health;
pub mod http;
pub mod mqtt;
pub mod pipeline;
pub mod plc;
pub mod rtsp;
pub mod sdnotify;
pub mod shared;
pub mod source;
pub mod spool;
pub mod spooler;
pub mod tasks;
pub mod validate;
pub mod verdict;
