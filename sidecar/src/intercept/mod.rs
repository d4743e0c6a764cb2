//! Transparent interception: `weft-sidecar init` installs the redirect
//! rules that send a workload's TCP through its sidecar (`rules` builds them
//! as data, `apply` runs them through iptables); `original` reads where a
//! redirected connection was going, and `map` which service that is.

pub mod apply;
pub mod args;
pub mod config;
pub mod map;
pub mod original;
pub mod rules;

pub use apply::{InitError, run_init};
pub use args::{InitArgs, InitFlagError};
pub use config::{InitConfig, Mode};
pub use map::{AddressMap, Mapped};
pub use original::original_dst;

/// What the outbound listener does with a connection whose original
/// destination is no mesh service (`--unknown-destinations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnknownDestinations {
    /// Dial the original address directly, as the sidecar's user (whose
    /// connections the rules leave alone), and copy bytes both ways.
    #[default]
    Passthrough,
    /// Close the connection.
    Deny,
}
pub use rules::{Cidr, Family, Plan};
