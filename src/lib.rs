//! inspectd: an edge inspection daemon. It runs a (quantized) CNN on the CPU with tract,
//! explains every prediction with a class activation map computed by its own reverse-mode pass
//! over the model head, and publishes verdicts. See `DESIGN.md` for the architecture.

pub mod cam;
pub mod cli;
pub mod error;
pub mod graph;
pub mod heatmap;
pub mod model;
pub mod tensor;
pub mod validate;
pub mod verdict;
