//! The transport credential of an ActorCluster: a CA per cluster, and the certificate,
//! key and management token the nodes use, in two Secrets.
//!
//! ```text
//!  <name>-transport-ca   (operator only)  ca.crt ca.key [previous.crt]  annotation rotated-at
//!        │ signs
//!        ▼
//!  <name>-transport-tls  (mounted by the kubelet into the node container, read-only)
//!        ca.crt = bundle of the CAs to trust · tls.crt · tls.key · management.token
//! ```
//!
//! Unlike the other children these are not a pure function of the spec: a CA must stay
//! the same across reconciles. [`plan`] takes what is stored and the time, and returns
//! only the Secrets to write (fresh key material comes from the system's random source):
//!
//! * no usable CA: a new CA, and a node credential from it;
//! * a CA within [`CA_RENEW_BEFORE`] of its end: a new CA; the old one becomes
//!   `previous.crt`, and the node bundle trusts both while the nodes keep their old
//!   certificate for [`ROTATION_GRACE`] (every node re-reads the mounted files well within
//!   it); then the node certificate is reissued from the new CA; the old CA leaves the
//!   bundle when it expires. No moment has two nodes that distrust each other;
//! * a node certificate missing, unreadable, naming another identity, not issued by the
//!   current CA (after the grace) or within [`CERT_RENEW_BEFORE`] of its end: reissued.
//!   The management token is kept across reissues.
//!
//! The node never gets Secret access: the kubelet mounts the node Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use troupe_contract::tls::{CA_FILE, CERT_FILE, KEY_FILE, TOKEN_FILE};

use super::Owner;

/// Lifetime of a cluster CA.
pub const CA_VALIDITY_SECS: i64 = 365 * 86_400;
/// A CA this close to its end is replaced.
pub const CA_RENEW_BEFORE: i64 = 60 * 86_400;
/// Lifetime of a node certificate.
pub const CERT_VALIDITY_SECS: i64 = 90 * 86_400;
/// A node certificate this close to its end is reissued.
pub const CERT_RENEW_BEFORE: i64 = 30 * 86_400;
/// How long after a CA rotation the nodes keep their old certificate while already
/// trusting the new CA (the kubelet's Secret refresh is about a minute, the node re-reads
/// every 10 s).
pub const ROTATION_GRACE: i64 = 10 * 60;
/// Certificates start this long before they are issued (clock skew between nodes).
const BACKDATE: i64 = 3600;
/// Annotation of the CA Secret: when (unix seconds) the CA was last replaced.
pub const ROTATED_AT: &str = "troupe.dev/ca-rotated-at";
/// Annotation of the node Secret: the CA (fingerprint) that issued its certificate.
pub const ISSUED_BY: &str = "troupe.dev/issued-by";
/// The previous CA in the CA Secret.
pub const PREVIOUS_CA_FILE: &str = "previous.crt";
/// The CA key in the CA Secret.
pub const CA_KEY_FILE: &str = "ca.key";

/// Why a credential cannot be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Key generation or signing failed.
    #[error("cannot issue the transport credential: {0}")]
    Issue(String),
    /// No random bytes.
    #[error("the system's random source failed")]
    Random,
}

fn issue_err(e: rcgen::Error) -> CredentialError {
    CredentialError::Issue(e.to_string())
}

/// The Secrets [`plan`] wants written (`None`: keep the stored one).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The CA Secret.
    pub ca: Option<Secret>,
    /// The node Secret.
    pub node: Option<Secret>,
}

/// A CA as stored.
struct Ca {
    cert_pem: String,
    key_pem: String,
    previous_pem: Option<String>,
    not_after: i64,
    rotated_at: i64,
}

fn text(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// `(notAfter, SAN DNS names)` of the first certificate of `pem`.
fn inspect(pem: &str) -> Option<(i64, Vec<String>)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((cert.validity().not_after.timestamp(), names))
}

fn read_ca(s: &Secret) -> Option<Ca> {
    let cert_pem = text(s, CA_FILE)?;
    let key_pem = text(s, CA_KEY_FILE)?;
    KeyPair::from_pem(&key_pem).ok()?;
    let (not_after, _) = inspect(&cert_pem)?;
    let rotated_at = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATED_AT))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Ca {
        cert_pem,
        key_pem,
        previous_pem: text(s, PREVIOUS_CA_FILE),
        not_after,
        rotated_at,
    })
}

/// A short, stable name of a CA certificate (FNV-1a of its PEM, hex).
pub fn fingerprint(pem: &str) -> String {
    let h = pem.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn time(unix: i64) -> Result<time::OffsetDateTime, CredentialError> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| CredentialError::Issue(e.to_string()))
}

fn ca_params(owner: &Owner, now: i64) -> Result<CertificateParams, CredentialError> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("troupe transport CA {}/{}", owner.namespace, owner.name),
    );
    params.distinguished_name = dn;
    params.not_before = time(now - BACKDATE)?;
    params.not_after = time(now + CA_VALIDITY_SECS)?;
    Ok(params)
}

fn new_ca(owner: &Owner, now: i64, previous: Option<&Ca>) -> Result<Ca, CredentialError> {
    let key = KeyPair::generate().map_err(issue_err)?;
    let cert = ca_params(owner, now)?
        .self_signed(&key)
        .map_err(issue_err)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        previous_pem: previous.map(|p| p.cert_pem.clone()),
        not_after: now + CA_VALIDITY_SECS,
        rotated_at: now,
    })
}

/// A node certificate for `identity` signed by `ca`: `(cert, key)` PEM.
fn issue_node(
    ca: &Ca,
    owner: &Owner,
    identity: &str,
    now: i64,
) -> Result<(String, String), CredentialError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(issue_err)?;
    // The issuer is the CA's name and key; its certificate need not be re-parsed.
    let issuer = Issuer::new(ca_params(owner, now)?, ca_key);
    let key = KeyPair::generate().map_err(issue_err)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(identity.try_into().map_err(issue_err)?)];
    params
        .distinguished_name
        .push(DnType::CommonName, identity.to_owned());
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = time(now - BACKDATE)?;
    params.not_after = time((now + CERT_VALIDITY_SECS).min(ca.not_after))?;
    let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn token() -> Result<String, CredentialError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CredentialError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn secret(
    owner: &Owner,
    name: String,
    data: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Secret {
    let mut meta = owner.meta(name);
    meta.annotations = Some(annotations);
    Secret {
        metadata: meta,
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// What to write so that `owner`'s nodes hold a valid credential at `now` (unix seconds),
/// given the stored CA and node Secrets.
pub fn plan(
    owner: &Owner,
    stored_ca: Option<&Secret>,
    stored_node: Option<&Secret>,
    now: i64,
) -> Result<Plan, CredentialError> {
    let identity = troupe_contract::tls::identity(&owner.namespace, &owner.name);
    let mut plan = Plan::default();
    let ca = match stored_ca.and_then(read_ca) {
        Some(ca) if ca.not_after - now > CA_RENEW_BEFORE => ca,
        old => {
            let ca = new_ca(owner, now, old.as_ref().filter(|o| o.not_after > now))?;
            let mut data = BTreeMap::from([
                (CA_FILE.to_owned(), ca.cert_pem.clone()),
                (CA_KEY_FILE.to_owned(), ca.key_pem.clone()),
            ]);
            if let Some(p) = &ca.previous_pem {
                data.insert(PREVIOUS_CA_FILE.to_owned(), p.clone());
            }
            plan.ca = Some(secret(
                owner,
                troupe_contract::tls::ca_secret_name(&owner.name),
                data,
                BTreeMap::from([(ROTATED_AT.to_owned(), now.to_string())]),
            ));
            ca
        }
    };
    // The CAs the nodes trust: the current one, and the previous one until it expires.
    let previous = ca
        .previous_pem
        .as_deref()
        .filter(|p| inspect(p).is_some_and(|(end, _)| end > now));
    let bundle = match previous {
        Some(p) => format!("{}{}", ca.cert_pem, p),
        None => ca.cert_pem.clone(),
    };
    let current = fingerprint(&ca.cert_pem);
    let in_grace = previous.is_some() && now - ca.rotated_at < ROTATION_GRACE;

    let node = stored_node.and_then(|s| {
        let cert = text(s, CERT_FILE)?;
        let key = text(s, KEY_FILE)?;
        let token = text(s, TOKEN_FILE)?;
        let issued_by = s.metadata.annotations.as_ref()?.get(ISSUED_BY)?.clone();
        let (end, names) = inspect(&cert)?;
        Some((cert, key, token, issued_by, end, names, text(s, CA_FILE)))
    });
    let token = match &node {
        Some((_, _, t, ..)) if t.trim().len() >= 32 => t.clone(),
        _ => token()?,
    };
    let keep = node
        .as_ref()
        .and_then(|(cert, key, _, issued_by, end, names, _)| {
            let valid = end - now > CERT_RENEW_BEFORE && names.contains(&identity);
            // During the grace the old certificate stays (its CA is in the bundle).
            let issuer_ok = *issued_by == current || in_grace;
            (valid && issuer_ok).then(|| (cert.clone(), key.clone(), issued_by.clone()))
        });
    let (cert, key, issued_by) = match keep {
        Some(k) => k,
        None => {
            let (c, k) = issue_node(&ca, owner, &identity, now)?;
            (c, k, current)
        }
    };
    let data = BTreeMap::from([
        (CA_FILE.to_owned(), bundle),
        (CERT_FILE.to_owned(), cert),
        (KEY_FILE.to_owned(), key),
        (TOKEN_FILE.to_owned(), token),
    ]);
    let unchanged = node.as_ref().is_some_and(|(c, k, t, i, _, _, b)| {
        Some(c) == data.get(CERT_FILE)
            && Some(k) == data.get(KEY_FILE)
            && Some(t) == data.get(TOKEN_FILE)
            && b.as_ref() == data.get(CA_FILE)
            && *i == issued_by
    });
    if !unchanged {
        plan.node = Some(secret(
            owner,
            troupe_contract::tls::secret_name(&owner.name),
            data,
            BTreeMap::from([(ISSUED_BY.to_owned(), issued_by)]),
        ));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::owner;
    use super::*;
    use troupe_actors::tls::{ClusterTls, TlsMaterial};

    const DAY: i64 = 86_400;
    const T0: i64 = 1_800_000_000;

    /// The stored state after applying `plan` over `stored`.
    fn store(stored: &mut (Option<Secret>, Option<Secret>), plan: Plan) {
        if let Some(ca) = plan.ca {
            stored.0 = Some(ca);
        }
        if let Some(node) = plan.node {
            stored.1 = Some(node);
        }
    }

    fn run(stored: &mut (Option<Secret>, Option<Secret>), now: i64) -> Plan {
        let p = plan(&owner(), stored.0.as_ref(), stored.1.as_ref(), now).expect("plan");
        store(stored, p.clone());
        p
    }

    fn material(node: &Secret) -> TlsMaterial {
        TlsMaterial {
            ca_pem: text(node, CA_FILE).expect("ca").into_bytes(),
            cert_pem: text(node, CERT_FILE).expect("cert").into_bytes(),
            key_pem: text(node, KEY_FILE).expect("key").into_bytes(),
        }
    }

    /// Whether a node holding `a` accepts a peer holding `b`: the peer's leaf must chain
    /// to one of `a`'s CAs (checked with the node's own TLS code over loopback).
    async fn link(a: &Secret, b: &Secret) -> bool {
        use std::sync::Arc;
        use troupe_actors::tls::{TlsFiles, TransportTls};
        let write = |s: &Secret, tag: &str| {
            let dir = std::env::temp_dir().join(format!(
                "troupe-cred-{}-{tag}-{}",
                std::process::id(),
                fingerprint(&text(s, CERT_FILE).expect("cert"))
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            let m = material(s);
            let f = TlsFiles::in_dir(&dir);
            std::fs::write(&f.ca, m.ca_pem).expect("ca");
            std::fs::write(&f.cert, m.cert_pem).expect("cert");
            std::fs::write(&f.key, m.key_pem).expect("key");
            let identity = troupe_contract::tls::identity("shop", "orders");
            let loaded = TransportTls::load(f, &identity).expect("loads");
            // Read into memory: the files are not needed any more.
            let _ = std::fs::remove_dir_all(&dir);
            loaded
        };
        let (server, client) = (write(a, "a"), write(b, "b"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let acceptor: Arc<dyn troupe_actors::transport::Acceptor> = Arc::new(server.acceptor());
        let accepted = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            acceptor.accept(stream).await.is_ok()
        });
        use troupe_actors::transport::Connector;
        let connected = client.connector().connect(&addr).await.is_ok();
        let accepted = accepted.await.unwrap_or(false);
        connected && accepted
    }

    #[test]
    fn a_new_cluster_gets_a_ca_and_a_node_credential_naming_it() {
        let mut stored = (None, None);
        let p = run(&mut stored, T0);
        let (ca, node) = (p.ca.expect("ca written"), p.node.expect("node written"));
        assert_eq!(ca.metadata.name.as_deref(), Some("orders-transport-ca"));
        assert_eq!(node.metadata.name.as_deref(), Some("orders-transport-tls"));
        assert!(
            text(&node, CA_KEY_FILE).is_none(),
            "the CA key is never mounted"
        );
        let (_, names) = inspect(&text(&node, CERT_FILE).expect("cert")).expect("parses");
        assert_eq!(names, vec!["orders.shop.troupe.internal".to_owned()]);
        assert_eq!(text(&node, TOKEN_FILE).map(|t| t.len()), Some(64));
        assert!(node.metadata.owner_references.is_some());
        let identity = troupe_contract::tls::identity("shop", "orders");
        assert!(ClusterTls::new(&material(&node), &identity).is_ok());
    }

    #[test]
    fn a_settled_credential_is_left_alone() {
        let mut stored = (None, None);
        run(&mut stored, T0);
        assert_eq!(run(&mut stored, T0 + DAY), Plan::default());
    }

    #[test]
    fn a_node_certificate_near_its_end_is_reissued_keeping_ca_and_token() {
        let mut stored = (None, None);
        run(&mut stored, T0);
        let token = text(stored.1.as_ref().expect("node"), TOKEN_FILE);
        let p = run(&mut stored, T0 + CERT_VALIDITY_SECS - CERT_RENEW_BEFORE + 1);
        assert!(p.ca.is_none());
        let node = p.node.expect("reissued");
        assert_eq!(text(&node, TOKEN_FILE), token);
    }

    #[test]
    fn garbage_secrets_are_replaced_not_trusted() {
        let junk = Secret {
            data: Some(BTreeMap::from([
                (CA_FILE.to_owned(), ByteString(b"junk".to_vec())),
                (CA_KEY_FILE.to_owned(), ByteString(vec![0xff; 10])),
            ])),
            ..Secret::default()
        };
        let p = plan(&owner(), Some(&junk), Some(&junk), T0).expect("plan");
        assert!(p.ca.is_some() && p.node.is_some());
    }

    #[tokio::test]
    async fn a_ca_rotation_never_leaves_two_nodes_that_distrust_each_other() {
        // The handshakes check validity against the real clock: the rotation happens now,
        // the first CA was made long enough ago for it to be due.
        let t1 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .expect("clock");
        let t0 = t1 - (CA_VALIDITY_SECS - CA_RENEW_BEFORE + 1);
        let mut stored = (None, None);
        let mut t = t0;
        while t < t1 {
            let p = run(&mut stored, t);
            assert!(t == t0 || p.ca.is_none(), "no early CA rotation");
            t += 20 * DAY;
        }
        let before = stored.1.clone().expect("node");
        // Near the CA's end: a new CA; the bundle trusts both, the certificate stays.
        let p = run(&mut stored, t1);
        assert!(p.ca.is_some(), "CA rotated");
        let during = p.node.expect("bundle widened");
        assert_eq!(text(&during, CERT_FILE), text(&before, CERT_FILE));
        // A node still on the old files and one on the widened bundle link both ways.
        assert!(link(&before, &during).await && link(&during, &before).await);
        // (A credential of an unrelated CA is refused: the check can fail.)
        let stranger = run(&mut (None, None), t1).node.expect("node");
        assert!(!link(&before, &stranger).await && !link(&stranger, &before).await);
        // Within the grace nothing else changes.
        assert!(run(&mut stored, t1 + ROTATION_GRACE - 1).node.is_none());
        // After the grace: the certificate from the new CA; those still on the widened
        // bundle accept it, and it accepts them.
        let after = run(&mut stored, t1 + ROTATION_GRACE)
            .node
            .expect("reissued");
        assert_ne!(text(&after, CERT_FILE), text(&before, CERT_FILE));
        assert!(link(&during, &after).await && link(&after, &during).await);
        // The old CA leaves the bundle only when it has expired.
        let expiry = t0 + CA_VALIDITY_SECS + 1;
        let last = run(&mut stored, expiry).node.expect("old CA dropped");
        assert!(text(&last, CA_FILE).expect("ca").len() < text(&after, CA_FILE).expect("ca").len());
    }
}
