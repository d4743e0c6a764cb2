//! Where the sidecar listens and what it calls: the app, the inbound,
//! outbound and admin listeners, the advertised address, and one local
//! port per declared upstream.

use std::net::SocketAddr;

use clap::Args;
use weft_proto::name::{ServiceName, validate_address};

use crate::config::{ConfigError, Upstream};
use crate::intercept::UnknownDestinations;

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The local app's address (inbound traffic goes there). Leave out for a
    /// sidecar that only makes calls.
    #[arg(long, env = "WEFT_APP")]
    pub app: Option<SocketAddr>,

    /// Where other sidecars connect.
    #[arg(long, env = "WEFT_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,

    /// Where the local app sends calls, routed by Host / :authority.
    #[arg(long, env = "WEFT_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,

    /// Admin endpoint: /live /ready /metrics /config, gRPC health.
    #[arg(long, env = "WEFT_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// The address other sidecars dial (host:port). Defaults to the inbound
    /// address; required when --inbound binds all interfaces.
    #[arg(long, env = "WEFT_ADVERTISE")]
    pub advertise: Option<String>,

    /// A local port for one dependency: NAME=ADDR, e.g.
    /// user-service=127.0.0.1:9001. Repeatable.
    #[arg(long = "upstream", env = "WEFT_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,

    /// Take the connections `weft-sidecar init` redirects: the outbound
    /// listener maps each one's original destination to a service (its
    /// spec.addresses or an instance's address) and tells the peer the port
    /// the app dialled, which the peer's app gets it on (127.0.0.1:<port>);
    /// the inbound listener forwards a plaintext one to the app's port it
    /// was sent to. Also listens on the IPv6 twins of the inbound and
    /// outbound addresses ([::] for 0.0.0.0, [::1] for 127.0.0.1).
    #[arg(long, env = "WEFT_INTERCEPT")]
    pub intercept: bool,

    /// With --intercept: what to do with a connection to an address that is
    /// no mesh service (counted in weft_intercepted_connections_total).
    #[arg(
        long,
        env = "WEFT_UNKNOWN_DESTINATIONS",
        value_enum,
        value_name = "passthrough|deny",
        requires = "intercept"
    )]
    pub unknown_destinations: Option<UnknownDestinations>,
}

/// The addresses, validated.
pub(super) struct Listen {
    pub app: Option<SocketAddr>,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub advertise: Option<String>,
    pub upstreams: Vec<Upstream>,
    pub intercept: Option<UnknownDestinations>,
}

impl ListenArgs {
    /// `joins_control_plane`: other sidecars learn the advertised address
    /// from it, so it must be one they can dial.
    pub(super) fn validate(self, joins_control_plane: bool) -> Result<Listen, ConfigError> {
        let mut upstreams: Vec<Upstream> = Vec::new();
        for u in &self.upstreams {
            let upstream = parse_upstream(u)?;
            let port = upstream.listen;
            if port.port() != 0 && upstreams.iter().any(|x| x.listen == port) {
                return Err(ConfigError::flag_says(
                    "upstream",
                    format!("{port} is given twice"),
                ));
            }
            upstreams.push(upstream);
        }
        if let Some(a) = &self.advertise {
            validate_address(a).map_err(ConfigError::flag("advertise"))?;
        } else if self.inbound.ip().is_unspecified() && joins_control_plane {
            return Err(ConfigError::flag_says(
                "advertise",
                format!(
                    "--inbound {} listens on all interfaces; say which address other sidecars \
                     dial, e.g. --advertise 10.0.0.5:{}",
                    self.inbound,
                    self.inbound.port()
                ),
            ));
        }
        Ok(Listen {
            app: self.app,
            inbound: self.inbound,
            outbound: self.outbound,
            admin: self.admin,
            advertise: self.advertise,
            upstreams,
            intercept: self
                .intercept
                .then(|| self.unknown_destinations.unwrap_or_default()),
        })
    }
}

/// `NAME=ADDR`.
fn parse_upstream(text: &str) -> Result<Upstream, ConfigError> {
    let (name, addr) = text.split_once('=').ok_or_else(|| {
        ConfigError::flag_says(
            "upstream",
            format!("{text:?} must be NAME=ADDR, e.g. user-service=127.0.0.1:9001"),
        )
    })?;
    let service = ServiceName::parse(name).map_err(ConfigError::flag("upstream"))?;
    let listen: SocketAddr = addr.parse().map_err(|_| {
        ConfigError::flag_says(
            "upstream",
            format!("{addr:?} in {text:?} is not an IP:port"),
        )
    })?;
    Ok(Upstream { service, listen })
}
