//! The edge of the control-plane API, shared by the server and `weftctl`:
//! every conversion between `weft.v1` messages and domain types
//! ([`convert`]), what the API promises its readers beyond the messages
//! ([`contract`]: the health words), and the admin credential file both
//! ends read ([`credential`]).
//!
//! The gRPC services themselves (`admin.rs`, `discovery.rs`,
//! `identity.rs`) sit beside the store they call, not in here: the store
//! encodes its records with [`convert`], so this module stays below both.

pub mod contract;
pub mod convert;
pub mod credential;
