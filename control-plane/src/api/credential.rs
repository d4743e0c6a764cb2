//! The admin credential: the file the control plane writes at first start
//! (`<data-dir>/admin.credential`, mode 0600) and `weftctl` reads — the
//! admin token, the trust domain, and the CA that signs the control
//! plane's certificate.

use serde::{Deserialize, Serialize};

/// The file `weftctl` reads: the admin token, the CA, the trust domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdminCredential {
    pub token: String,
    pub trust_domain: String,
    /// PEM of the mesh CA.
    pub ca: String,
}

/// The credential's file name inside `--data-dir`.
pub const CREDENTIAL_FILE: &str = "admin.credential";
