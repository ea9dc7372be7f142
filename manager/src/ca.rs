//! The cluster's certificate authority: the root CA (kept in the replicated
//! cluster object, so whichever manager leads can sign), node certificates
//! signed from CSRs, and join-token checks. The CA ignores the subject a CSR
//! asks for: CN = node id, OU = role, O = cluster id are always its own.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use shoal_proto::model::{Cluster, Role, RootCa};
use shoal_proto::tls::MANAGER_SERVER_NAME;
use shoal_proto::token::JoinToken;
use time::OffsetDateTime;

/// Root CA lifetime (like Swarm: 20 years).
pub const ROOT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Node certificate lifetime (like Swarm: 90 days); nodes renew at 50–80 %.
pub const NODE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Shortest node certificate lifetime accepted.
pub const MIN_NODE_VALIDITY: Duration = Duration::from_secs(10);
use shoal_proto::tls::CERT_BACKDATE as BACKDATE;

/// The node certificate lifetime a cluster asked for.
pub fn node_validity(cluster: &Cluster) -> Duration {
    match cluster.node_cert_ttl_secs {
        0 => NODE_VALIDITY,
        s => Duration::from_secs(s).max(MIN_NODE_VALIDITY),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("a valid join token is necessary to join this cluster: {0}")]
    BadToken(String),
    #[error("certificate request: {0}")]
    Csr(String),
    #[error("signing: {0}")]
    Sign(String),
}

fn sign_err(e: rcgen::Error) -> CaError {
    CaError::Sign(e.to_string())
}

/// A new root CA for `cluster_id`.
pub fn new_root(cluster_id: &str) -> Result<RootCa, CaError> {
    let key = KeyPair::generate().map_err(sign_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "shoal-root-ca");
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_VALIDITY;
    let cert = params.self_signed(&key).map_err(sign_err)?;
    Ok(RootCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Signs a node's CSR, imposing the subject: CN = node id, OU = role,
/// O = cluster id; managers also get the DNS name clients verify.
pub fn sign_node(
    root: &RootCa,
    csr_der: &[u8],
    node_id: &str,
    role: Role,
    cluster_id: &str,
    validity: Duration,
) -> Result<String, CaError> {
    let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
    let mut csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| CaError::Csr(e.to_string()))?;
    let mut params = CertificateParams::new(vec![format!("shoal-{role}"), node_id.to_string()])
        .map_err(|e| CaError::Csr(e.to_string()))?;
    if role == Role::Manager {
        params.subject_alt_names.push(SanType::DnsName(
            MANAGER_SERVER_NAME.try_into().map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        ));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let serial: [u8; 16] = rand::random();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    csr.params = params;
    let key = KeyPair::from_pem(&root.key_pem).map_err(sign_err)?;
    let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, key).map_err(sign_err)?;
    Ok(csr.signed_by(&issuer).map_err(sign_err)?.pem())
}

/// The token for `role` as users see it.
pub fn token(cluster: &Cluster, role: Role) -> Result<JoinToken, CaError> {
    let der = shoal_proto::tls::ca_der(&cluster.root_ca.cert_pem).map_err(|e| CaError::Sign(e.to_string()))?;
    let secret = match role {
        Role::Worker => cluster.worker_secret.clone(),
        Role::Manager => cluster.manager_secret.clone(),
    };
    Ok(JoinToken::new(&der, secret))
}

/// Which role a presented token grants. Compares in constant time.
pub fn check_token(cluster: &Cluster, presented: &str) -> Result<Role, CaError> {
    let t: JoinToken =
        presented.parse().map_err(|e: shoal_proto::token::TokenError| CaError::BadToken(e.to_string()))?;
    let der = shoal_proto::tls::ca_der(&cluster.root_ca.cert_pem).map_err(|e| CaError::Sign(e.to_string()))?;
    if !ct_eq(&t.ca_digest, &shoal_proto::token::ca_digest(&der)) {
        return Err(CaError::BadToken("the token belongs to another cluster (CA digest mismatch)".into()));
    }
    if ct_eq(t.secret.as_bytes(), cluster.manager_secret.as_bytes()) {
        return Ok(Role::Manager);
    }
    if ct_eq(t.secret.as_bytes(), cluster.worker_secret.as_bytes()) {
        return Ok(Role::Worker);
    }
    Err(CaError::BadToken("the token is not valid (rotated or mistyped)".into()))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::model::Meta;
    use shoal_proto::tls::Identity;

    fn cluster() -> Cluster {
        Cluster {
            id: "cluster1".into(),
            root_ca: new_root("cluster1").expect("root"),
            worker_secret: JoinToken::new_secret(),
            manager_secret: JoinToken::new_secret(),
            node_cert_ttl_secs: 0,
            net: Default::default(),
            unlock_key: String::new(),
            settings: Default::default(),
            meta: Meta::default(),
        }
    }

    #[test]
    fn csr_subject_is_imposed_by_the_ca() {
        let c = cluster();
        let (_key, csr) = shoal_proto::tls::new_key_and_csr().expect("csr");
        let pem = sign_node(&c.root_ca, &csr, "node-a", Role::Worker, &c.id, NODE_VALIDITY).expect("sign");
        let id = Identity::from_pem(&pem).expect("identity");
        assert_eq!(id.node_id, "node-a");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "cluster1");
        let days = (id.not_after_ms - shoal_proto::model::now_ms()) / 86_400_000;
        assert!((89..=90).contains(&days), "{days}");
    }

    #[test]
    fn tokens_map_to_roles_and_rotation_invalidates() {
        let mut c = cluster();
        let w = token(&c, Role::Worker).expect("t").to_string();
        let m = token(&c, Role::Manager).expect("t").to_string();
        assert_eq!(check_token(&c, &w).expect("worker"), Role::Worker);
        assert_eq!(check_token(&c, &m).expect("manager"), Role::Manager);
        c.worker_secret = JoinToken::new_secret();
        assert!(check_token(&c, &w).unwrap_err().to_string().contains("rotated"));
        assert_eq!(check_token(&c, &m).expect("manager still"), Role::Manager);
    }

    #[test]
    fn foreign_and_garbage_tokens_are_refused() {
        let c = cluster();
        let other = cluster();
        let foreign = token(&other, Role::Manager).expect("t").to_string();
        assert!(check_token(&c, &foreign).unwrap_err().to_string().contains("another cluster"));
        assert!(check_token(&c, "SHOAL-1-nope").unwrap_err().to_string().contains("valid join token"));
    }

    #[test]
    fn garbage_csr_is_refused() {
        let c = cluster();
        assert!(matches!(sign_node(&c.root_ca, b"junk", "n", Role::Worker, "c", NODE_VALIDITY), Err(CaError::Csr(_))));
    }
}
