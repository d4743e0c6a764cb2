//! The store's command-line flags (`--store`, `--etcd-*`), shared by the
//! control plane's binary and the tests that start it like a user would.

use std::path::PathBuf;
use std::time::Duration;

use weft_proto::duration::parse_duration;

use super::{DEFAULT_MAX_TXN_OPS, EtcdTls, KEY_PREFIX, StoreConfig, StoreConfigError};

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where resources, tokens and instances live: `embedded` (one file in
    /// --data-dir, one replica) or `etcd://host:2379[,host:2379...]`,
    /// shared by several replicas (each needs the same --ca-cert/--ca-key).
    #[arg(long, env = "WEFT_STORE", default_value = "embedded")]
    pub store: String,
    /// The CA (PEM) that signed etcd's certificates: talk to etcd over TLS.
    #[arg(long, env = "WEFT_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// This replica's client certificate (PEM) for etcd. Needs --etcd-key and --etcd-ca.
    #[arg(long, env = "WEFT_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, env = "WEFT_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Every key of this mesh in etcd lives under this prefix.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = KEY_PREFIX)]
    pub etcd_prefix: String,
    /// This replica's etcd lease: when the replica dies, the instances of
    /// the sidecars connected to it are removed after this long (a sidecar
    /// that reconnects to another replica within it keeps its place).
    #[arg(long, env = "WEFT_ETCD_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub etcd_lease_ttl: Duration,
    /// The etcd members' --max-txn-ops. An apply is one transaction, so it
    /// holds at most one resource fewer; a larger one is refused whole,
    /// naming this limit. Raise it only with the members' own.
    #[arg(long, env = "WEFT_ETCD_MAX_TXN_OPS", default_value_t = DEFAULT_MAX_TXN_OPS)]
    pub etcd_max_txn_ops: usize,
}

impl StoreArgs {
    /// The store these flags name; `ca_files`: whether --ca-cert/--ca-key
    /// were given (etcd needs them: every replica signs with the same CA).
    pub fn config(&self, ca_files: bool) -> Result<StoreConfig, StoreConfigError> {
        let mut store = StoreConfig::parse(&self.store)?;
        match &mut store {
            StoreConfig::Etcd(etcd) => {
                if !ca_files {
                    return Err(StoreConfigError::SharedCa);
                }
                if self.etcd_lease_ttl < Duration::from_secs(1) {
                    return Err(StoreConfigError::LeaseTtl);
                }
                etcd.tls = self.etcd_ca.clone().map(|ca| EtcdTls {
                    ca,
                    identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
                });
                etcd.prefix = self.etcd_prefix.clone();
                etcd.lease_ttl = self.etcd_lease_ttl;
                if self.etcd_max_txn_ops < 2 {
                    return Err(StoreConfigError::MaxTxnOps);
                }
                etcd.max_txn_ops = self.etcd_max_txn_ops;
            }
            StoreConfig::Embedded if self.etcd_ca.is_some() => {
                return Err(StoreConfigError::EtcdFlags);
            }
            StoreConfig::Embedded => {}
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    fn config(args: &[&str]) -> Result<StoreConfig, StoreConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("cp").chain(args.iter().copied()))
            .expect("flags parse");
        cli.store.config(true)
    }

    #[test]
    fn etcd_limits_are_checked_and_kept() {
        let etcd = ["--store", "etcd://127.0.0.1:2379"];
        let Ok(StoreConfig::Etcd(c)) = config(&etcd) else {
            panic!("etcd store");
        };
        assert_eq!(c.max_txn_ops, DEFAULT_MAX_TXN_OPS);
        let raised = [&etcd[..], &["--etcd-max-txn-ops", "1000"]].concat();
        let Ok(StoreConfig::Etcd(c)) = config(&raised) else {
            panic!("etcd store");
        };
        assert_eq!(c.max_txn_ops, 1000);
        let one = [&etcd[..], &["--etcd-max-txn-ops", "1"]].concat();
        assert_eq!(config(&one), Err(StoreConfigError::MaxTxnOps));
        let short = [&etcd[..], &["--etcd-lease-ttl", "500ms"]].concat();
        assert_eq!(config(&short), Err(StoreConfigError::LeaseTtl));
    }
}
