//! `weft-sidecar init`'s flags, checked into an [`InitConfig`].

use clap::Parser;

use super::config::{InitConfig, Mode};
use super::rules::{Cidr, Family, Redirect};

/// The sidecar's admin port, which `init` never redirects.
const ADMIN_PORT: u16 = 15000;

/// Installs the rules that send this network namespace's TCP through the
/// sidecar (run as the pod's init container, or as root beside a
/// workload): outbound TCP to the outbound port, except the proxy's own
/// (by uid/gid), loopback and excluded ports/CIDRs; inbound TCP to the
/// inbound port, except the sidecar's own ports and excluded ports/CIDRs.
/// Each family's rules are applied in one iptables-restore transaction
/// (all or nothing). Running it again changes nothing; `--remove` takes
/// every rule and chain it added away. Needs CAP_NET_ADMIN and CAP_NET_RAW
/// (root).
#[derive(Debug, Parser)]
#[command(
    name = "weft-sidecar init",
    after_help = "Example:\n  weft-sidecar init --proxy-uid 1337 --exclude-inbound-ports 22 \\\n    \
                  --exclude-outbound-cidrs 169.254.169.254/32\n  \
                  weft-sidecar init --remove"
)]
pub struct InitArgs {
    /// The uid the sidecar runs as: its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,

    /// The gid the sidecar runs as: connections of this group are never redirected.
    #[arg(long, default_value_t = 1337)]
    pub proxy_gid: u32,

    /// The sidecar's inbound listener port (redirected inbound TCP goes there).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,

    /// The sidecar's outbound listener port (redirected outbound TCP goes there).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,

    /// Inbound ports that reach the app directly, e.g. 22,9090 (15000 and
    /// the sidecar's own ports are always excluded).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub exclude_inbound_ports: Vec<u16>,

    /// Destination ports the app reaches directly, e.g. 5432.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub exclude_outbound_ports: Vec<u16>,

    /// Source addresses whose connections reach the app directly, e.g. 10.1.0.0/16.
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = Cidr::parse)]
    pub exclude_inbound_cidrs: Vec<Cidr>,

    /// Destination addresses the app reaches directly, e.g. 169.254.169.254/32.
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = Cidr::parse)]
    pub exclude_outbound_cidrs: Vec<Cidr>,

    /// Remove every rule and chain init added, instead of adding them.
    #[arg(long)]
    pub remove: bool,

    /// Print the iptables commands; run nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Leave IPv6 alone (no ip6tables rules), e.g. where the kernel has no IPv6.
    #[arg(long)]
    pub no_ipv6: bool,
}

/// A combination of flags `init` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitFlagError {
    #[error("{0}: 0 is not a port a listener can be redirected to")]
    ZeroPort(&'static str),
    #[error(
        "--inbound-port and --outbound-port are both {0}: inbound and outbound connections \
         must reach different listeners"
    )]
    SamePorts(u16),
    #[error(
        "--proxy-uid 0: root's connections would all escape interception; run the sidecar \
         as its own user (default 1337)"
    )]
    RootProxy,
    #[error("{0}: an IPv6 exclusion with --no-ipv6 would do nothing")]
    Ipv6Ignored(Cidr),
}

impl InitArgs {
    pub fn validate(self) -> Result<InitConfig, InitFlagError> {
        for (flag, port) in [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
        ] {
            if port == 0 {
                return Err(InitFlagError::ZeroPort(flag));
            }
        }
        if self.inbound_port == self.outbound_port {
            return Err(InitFlagError::SamePorts(self.inbound_port));
        }
        if self.proxy_uid == 0 {
            return Err(InitFlagError::RootProxy);
        }
        let mut families = vec![Family::V4];
        if !self.no_ipv6 {
            families.push(Family::V6);
        } else if let Some(c) = self
            .exclude_inbound_cidrs
            .iter()
            .chain(&self.exclude_outbound_cidrs)
            .find(|c| c.family() == Family::V6)
        {
            return Err(InitFlagError::Ipv6Ignored(*c));
        }
        Ok(InitConfig {
            redirect: Redirect {
                proxy_uid: self.proxy_uid,
                proxy_gid: self.proxy_gid,
                inbound_port: self.inbound_port,
                outbound_port: self.outbound_port,
                admin_port: ADMIN_PORT,
                exclude_inbound_ports: self.exclude_inbound_ports,
                exclude_outbound_ports: self.exclude_outbound_ports,
                exclude_inbound_cidrs: self.exclude_inbound_cidrs,
                exclude_outbound_cidrs: self.exclude_outbound_cidrs,
            },
            mode: if self.remove {
                Mode::Remove
            } else {
                Mode::Install
            },
            dry_run: self.dry_run,
            families,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<InitConfig, String> {
        let mut v = vec!["init"];
        v.extend_from_slice(args);
        InitArgs::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_sidecar_ports() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.redirect.proxy_uid, 1337);
        assert_eq!(c.redirect.inbound_port, 15006);
        assert_eq!(c.redirect.outbound_port, 15001);
        assert_eq!(c.mode, Mode::Install);
        assert_eq!(c.families, [Family::V4, Family::V6]);
    }

    #[test]
    fn lists_are_comma_separated() {
        let c = parse(&[
            "--exclude-inbound-ports",
            "22,9090",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32,10.0.0.0/8",
            "--remove",
        ])
        .expect("flags");
        assert_eq!(c.redirect.exclude_inbound_ports, [22, 9090]);
        assert_eq!(c.redirect.exclude_outbound_cidrs.len(), 2);
        assert_eq!(c.mode, Mode::Remove);
    }

    #[test]
    fn bad_flags_are_named() {
        let e = parse(&["--exclude-outbound-cidrs", "10.0.0.0/99"]).expect_err("bad cidr");
        assert!(
            e.contains("--exclude-outbound-cidrs") && e.contains("prefix"),
            "{e}"
        );
        let e = parse(&["--exclude-inbound-ports", "22,http"]).expect_err("bad port");
        assert!(e.contains("--exclude-inbound-ports"), "{e}");
        let e = parse(&["--inbound-port", "15001"]).expect_err("same ports");
        assert!(e.contains("different listeners"), "{e}");
        let e = parse(&["--proxy-uid", "0"]).expect_err("root");
        assert!(e.contains("--proxy-uid"), "{e}");
        let e = parse(&["--no-ipv6", "--exclude-inbound-cidrs", "fd00::/8"]).expect_err("v6");
        assert!(e.contains("--no-ipv6"), "{e}");
    }
}
