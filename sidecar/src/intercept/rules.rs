//! The redirect rules as data: which chains, which rules in which order, and
//! the iptables argument lists that install or remove them. Pure, so the
//! whole rule set is unit-tested without root; `apply` only runs the lists.
//!
//! The shape follows what Istio's `istio-iptables` and Linkerd's
//! `proxy-init` install: our own chains in the `nat` table, entered from
//! `PREROUTING` (inbound) and `OUTPUT` (outbound), so that removing them
//! never touches anyone else's rules.
//!
//! ```text
//! PREROUTING -p tcp ─► WEFT_INBOUND: own ports, excluded ports/CIDRs ─► RETURN
//!                                    else ─► WEFT_IN_REDIRECT ─► REDIRECT :15006
//! OUTPUT -p tcp ─► WEFT_OUTPUT: proxy uid/gid, loopback, excluded ports/CIDRs ─► RETURN
//!                               else ─► WEFT_REDIRECT ─► REDIRECT :15001
//! ```

use std::fmt;
use std::net::IpAddr;

/// The table every rule lives in.
pub const TABLE: &str = "nat";
pub const CHAIN_OUTPUT: &str = "WEFT_OUTPUT";
pub const CHAIN_REDIRECT: &str = "WEFT_REDIRECT";
pub const CHAIN_INBOUND: &str = "WEFT_INBOUND";
pub const CHAIN_IN_REDIRECT: &str = "WEFT_IN_REDIRECT";
/// Ours, in the order they are created (a chain is created before a rule
/// jumps to it).
pub const CHAINS: [&str; 4] = [
    CHAIN_REDIRECT,
    CHAIN_IN_REDIRECT,
    CHAIN_INBOUND,
    CHAIN_OUTPUT,
];

/// IPv4 (`iptables`) or IPv6 (`ip6tables`): the same rules, each family
/// with its own CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The program that edits this family's tables.
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// An address block, `10.0.0.0/8` or a single address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)")]
    Address(String),
    #[error("{text:?}: the prefix length must be 0 to {max}")]
    Prefix { text: String, max: u8 },
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(CidrError::Prefix {
                        text: s.to_string(),
                        max,
                    });
                }
            },
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What `init` redirects and what it leaves alone (validated flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// The sidecar's admin port: never redirected inbound.
    pub admin_port: u16,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_cidrs: Vec<Cidr>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

/// One rule: its chain and what follows the chain name on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub spec: Vec<String>,
}

impl Rule {
    fn new(chain: &'static str, spec: &[&str]) -> Self {
        Rule {
            chain,
            spec: spec.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    /// `-t nat <op> <chain> <spec...>`: `op` is `-A`, `-C` or `-D`.
    pub fn args(&self, op: &str) -> Vec<String> {
        let mut v = vec![
            "-t".to_string(),
            TABLE.to_string(),
            op.to_string(),
            self.chain.to_string(),
        ];
        v.extend(self.spec.iter().cloned());
        v
    }
}

/// `-t nat <op> <chain>`: `-N` (create), `-F` (flush), `-X` (delete), `-S`
/// (list, which fails when the chain does not exist).
pub fn chain_args(op: &str, chain: &str) -> Vec<String> {
    vec!["-t".into(), TABLE.into(), op.into(), chain.into()]
}

/// The whole rule set of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub family: Family,
    /// The rules of our chains, chain by chain, in order.
    pub rules: Vec<Rule>,
    /// The rules in the built-in chains that enter ours.
    pub jumps: Vec<Rule>,
}

impl Plan {
    pub fn new(r: &Redirect, family: Family) -> Self {
        let mut rules = vec![
            Rule::new(
                CHAIN_REDIRECT,
                &[
                    "-p",
                    "tcp",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &r.outbound_port.to_string(),
                ],
            ),
            Rule::new(
                CHAIN_IN_REDIRECT,
                &[
                    "-p",
                    "tcp",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &r.inbound_port.to_string(),
                ],
            ),
        ];
        // Inbound: the sidecar's own ports always reach it directly (peers
        // dial the inbound port; probes the admin port).
        let mut own = vec![r.admin_port, r.inbound_port, r.outbound_port];
        own.extend(&r.exclude_inbound_ports);
        for port in dedup(own) {
            rules.push(Rule::new(
                CHAIN_INBOUND,
                &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"],
            ));
        }
        for cidr in r
            .exclude_inbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            rules.push(Rule::new(
                CHAIN_INBOUND,
                &["-s", &cidr.to_string(), "-j", "RETURN"],
            ));
        }
        rules.push(Rule::new(
            CHAIN_INBOUND,
            &["-p", "tcp", "-j", CHAIN_IN_REDIRECT],
        ));
        // Outbound: the proxy's own connections first, or it would loop
        // into itself; then anything leaving through loopback (127.0.0.0/8,
        // ::1 and the pod's own addresses: the app talking to itself).
        rules.push(Rule::new(
            CHAIN_OUTPUT,
            &[
                "-m",
                "owner",
                "--uid-owner",
                &r.proxy_uid.to_string(),
                "-j",
                "RETURN",
            ],
        ));
        rules.push(Rule::new(
            CHAIN_OUTPUT,
            &[
                "-m",
                "owner",
                "--gid-owner",
                &r.proxy_gid.to_string(),
                "-j",
                "RETURN",
            ],
        ));
        rules.push(Rule::new(CHAIN_OUTPUT, &["-o", "lo", "-j", "RETURN"]));
        for port in dedup(r.exclude_outbound_ports.clone()) {
            rules.push(Rule::new(
                CHAIN_OUTPUT,
                &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"],
            ));
        }
        for cidr in r
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            rules.push(Rule::new(
                CHAIN_OUTPUT,
                &["-d", &cidr.to_string(), "-j", "RETURN"],
            ));
        }
        rules.push(Rule::new(
            CHAIN_OUTPUT,
            &["-p", "tcp", "-j", CHAIN_REDIRECT],
        ));
        let jumps = vec![
            Rule::new("PREROUTING", &["-p", "tcp", "-j", CHAIN_INBOUND]),
            Rule::new("OUTPUT", &["-p", "tcp", "-j", CHAIN_OUTPUT]),
        ];
        Plan {
            family,
            rules,
            jumps,
        }
    }

    /// What a dry run prints: the commands a fresh namespace gets.
    pub fn install_commands(&self) -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = CHAINS.iter().map(|c| chain_args("-N", c)).collect();
        v.extend(self.rules.iter().map(|r| r.args("-A")));
        v.extend(self.jumps.iter().map(|r| r.args("-A")));
        v
    }
}

/// Keeps the first of each port, in order.
fn dedup(ports: Vec<u16>) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::with_capacity(ports.len());
    for p in ports {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect {
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15000,
            exclude_inbound_ports: vec![22, 15000],
            exclude_outbound_ports: vec![5432],
            exclude_inbound_cidrs: vec![Cidr::parse("10.1.0.0/16").expect("cidr")],
            exclude_outbound_cidrs: vec![
                Cidr::parse("169.254.169.254").expect("cidr"),
                Cidr::parse("fd00::/8").expect("cidr"),
            ],
        }
    }

    fn lines(cmds: &[Vec<String>]) -> Vec<String> {
        cmds.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn the_ipv4_rule_set_in_order() {
        let plan = Plan::new(&redirect(), Family::V4);
        assert_eq!(
            lines(&plan.install_commands()),
            [
                "-t nat -N WEFT_REDIRECT",
                "-t nat -N WEFT_IN_REDIRECT",
                "-t nat -N WEFT_INBOUND",
                "-t nat -N WEFT_OUTPUT",
                "-t nat -A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-t nat -A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-t nat -A WEFT_INBOUND -p tcp --dport 15000 -j RETURN",
                "-t nat -A WEFT_INBOUND -p tcp --dport 15006 -j RETURN",
                "-t nat -A WEFT_INBOUND -p tcp --dport 15001 -j RETURN",
                "-t nat -A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
                "-t nat -A WEFT_INBOUND -s 10.1.0.0/16 -j RETURN",
                "-t nat -A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT",
                "-t nat -A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-t nat -A WEFT_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-t nat -A WEFT_OUTPUT -o lo -j RETURN",
                "-t nat -A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-t nat -A WEFT_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-t nat -A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT",
                "-t nat -A PREROUTING -p tcp -j WEFT_INBOUND",
                "-t nat -A OUTPUT -p tcp -j WEFT_OUTPUT",
            ]
        );
    }

    #[test]
    fn each_family_gets_only_its_own_cidrs() {
        let v6 = lines(&Plan::new(&redirect(), Family::V6).install_commands());
        assert!(v6.contains(&"-t nat -A WEFT_OUTPUT -d fd00::/8 -j RETURN".to_string()));
        assert!(
            !v6.iter()
                .any(|l| l.contains("169.254") || l.contains("10.1.0.0"))
        );
        let v4 = lines(&Plan::new(&redirect(), Family::V4).install_commands());
        assert!(!v4.iter().any(|l| l.contains("fd00")));
        assert_eq!(Family::V6.program(), "ip6tables");
    }

    #[test]
    fn the_proxy_is_excluded_before_anything_is_redirected() {
        let plan = Plan::new(&redirect(), Family::V4);
        let out: Vec<_> = plan
            .rules
            .iter()
            .filter(|r| r.chain == CHAIN_OUTPUT)
            .map(|r| r.spec.join(" "))
            .collect();
        assert!(out[0].contains("--uid-owner 1337"));
        assert_eq!(
            out.last().map(String::as_str),
            Some("-p tcp -j WEFT_REDIRECT")
        );
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            Cidr::parse("10.0.0.0/8").map(|c| c.to_string()),
            Ok("10.0.0.0/8".to_string())
        );
        assert_eq!(
            Cidr::parse("::1").map(|c| c.to_string()),
            Ok("::1/128".to_string())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("fd00::/129").is_err());
    }
}
