//! Process plumbing both Weft binaries share, so that the sidecar and the
//! control plane behave alike as processes: JSON logs with a filter
//! changeable at runtime and its `/log-level` handler ([`logs`]), and the
//! signal they stop on ([`shutdown`]).

pub mod logs;
pub mod shutdown;
