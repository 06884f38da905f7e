//! Class activation maps without an autodiff framework: tract computes the target activation A
//! and the logits in one optimized pass; the head module differentiates the small subgraph after
//! A in Rust to get G = ∂y_c/∂A; the methods module turns (A, G) into a map.
//!
//! The package also holds what the explanation rests on: model loading ([`model`], where tract
//! stays inside), the graph view ([`graph`]), plain tensors ([`tensor`]) and the heatmap
//! rendering ([`heatmap`]), and the timing statistics ([`stats`]). Without the default `tract`
//! feature only [`tensor`], [`heatmap`], [`stats`] and [`error`] are built: what the plant supervisor needs to draw a map it received.

pub mod error;
pub mod heatmap;
pub mod stats;
pub mod tensor;

#[cfg(feature = "tract")]
mod explain;
#[cfg(feature = "tract")]
pub mod graph;
#[cfg(feature = "tract")]
pub mod head;
#[cfg(feature = "tract")]
pub mod methods;
#[cfg(feature = "tract")]
pub mod model;
#[cfg(feature = "tract")]
pub mod ops;

#[cfg(feature = "tract")]
pub use explain::*;
