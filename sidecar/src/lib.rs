//! The Weft sidecar: carries one service's traffic to and from the mesh.
//!
//! [`run`] is the whole sidecar as a library function; `main.rs` only turns
//! flags into a [`config::SidecarConfig`] and binds the listeners.

pub mod admin;
pub mod authz;
pub mod backoff;
pub mod body;
pub mod config;
pub mod discovery;
pub mod drain;
pub mod edge;
pub mod endpoint;
pub mod error;
pub mod failover;
pub mod health;
pub mod identity;
pub mod intercept;
pub mod malloc;
pub mod model;
pub mod proxy;
pub mod rand;
pub mod resilience;
pub mod run;
pub mod table;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod wrap;

pub use run::{Listeners, SidecarError, run, run_notifying};
