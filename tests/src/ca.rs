//! A mesh CA of a test's own, made with rcgen: leaves for sidecars that
//! run from certificate files, certificate requests signed the way the
//! control plane signs them, and the serving certificate of a control plane
//! a test stands in for.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use weft_proto::identity::{fingerprint, pem};

/// The trust domain of the certificates made here.
pub const TRUST_DOMAIN: &str = "weft.local";

/// `spiffe://weft.local/service/<service>`.
pub fn spiffe(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/service/{service}")
}

/// A self-signed serving certificate for `names`, as an operator brings
/// one to the gateway: (certificate PEM, key PEM).
pub fn self_signed(names: &[&str]) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)?.self_signed(&key)?;
    Ok((
        pem("CERTIFICATE", cert.der()),
        pem("PRIVATE KEY", &key.serialize_der()),
    ))
}

/// A mesh CA: its certificate and what signs with it.
pub struct TestCa {
    /// Its certificate, PEM.
    pub pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: rcgen gives every certificate the same
        // default one, and OpenSSL (Envoy, in the benchmark) takes a leaf
        // whose issuer is its own subject for self-signed.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft test CA");
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            pem: pem("CERTIFICATE", cert.der()),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Its certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The SHA-256 fingerprint a join token pins.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    /// A leaf for `service` expiring on `expires` (year, month, day):
    /// (chain PEM, key PEM).
    pub fn leaf(&self, service: &str, expires: (i32, u8, u8)) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let params = leaf_params(&spiffe(service), expires)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            pem("CERTIFICATE", cert.der()),
            pem("PRIVATE KEY", &key.serialize_der()),
        ))
    }

    /// Signs a certificate request as the control plane does: the request
    /// must ask for exactly `id`, and only its public key is taken over.
    /// Returns the leaf (DER) and its expiry (unix ms).
    pub fn sign_request(&self, csr: &[u8], id: &str) -> anyhow::Result<(Vec<u8>, u64)> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr.to_vec(),
        ))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        anyhow::ensure!(asked == [id], "the request asks for {asked:?}, not {id}");
        let expires = (2040, 1, 1);
        let leaf = CertificateSigningRequestParams {
            params: leaf_params(id, expires)?,
            public_key: csr.public_key,
        };
        let cert = leaf.signed_by(&self.issuer)?;
        let expires_ms =
            rcgen::date_time_ymd(expires.0, expires.1, expires.2).unix_timestamp() * 1000;
        Ok((cert.der().to_vec(), u64::try_from(expires_ms)?))
    }

    /// A control plane's serving certificate (`spiffe://weft.local/control-plane`)
    /// with the CA in its chain, as the real one serves it, and its key: PEM.
    pub fn control_plane_identity(&self) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let id = format!("spiffe://{TRUST_DOMAIN}/control-plane");
        let cert = leaf_params(&id, (2040, 1, 1))?.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", pem("CERTIFICATE", cert.der()), self.pem),
            pem("PRIVATE KEY", &key.serialize_der()),
        ))
    }
}

/// A leaf's parameters: one URI SAN, server and client auth.
fn leaf_params(uri: &str, (y, m, d): (i32, u8, u8)) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_after = rcgen::date_time_ymd(y, m, d);
    Ok(params)
}
