//! The Weft control plane: the catalog of services and instances, the policy
//! resources, and the discovery streams that push each sidecar what it needs.
//! Also the library behind `weftctl`.

pub mod admin;
pub mod api;
pub mod auth;
pub mod ca;
pub mod catalog;
pub mod cli;
pub mod dashboard;
pub mod discovery;
mod http;
pub mod identity;
pub mod metrics;
pub mod resource;
pub mod resume;
pub mod server;
pub mod store;

pub use server::{ControlPlaneConfig, Listeners, ServerError, run};
