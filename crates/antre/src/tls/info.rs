//! What a connection's TLS session is, named as RabbitMQ names it in the
//! management API (`ssl_protocol: "tlsv1.3"`, `ssl_cipher: "aes_256_gcm"`,
//! `peer_cert_subject: "CN=app,O=acme"`), and the client certificate's
//! common name for SASL EXTERNAL.

use rustls::pki_types::CertificateDer;
use rustls::{ProtocolVersion, ServerConnection};
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Name;

/// The TLS session of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `tlsv1.3` or `tlsv1.2`.
    pub protocol: String,
    /// The key exchange: `ecdhe_rsa`, `ecdhe_ecdsa`, or `any` for TLS 1.3
    /// (whose suites do not fix it), as Erlang's ssl names it.
    pub key_exchange: String,
    /// The bulk cipher, e.g. `aes_256_gcm`, `chacha20_poly1305`.
    pub cipher: String,
    /// The MAC: `aead` for every suite rustls offers.
    pub hash: String,
    /// The verified client certificate, if the client presented one.
    pub peer: Option<PeerCertificate>,
}

/// A verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject as RFC 4514 text (`CN=app,O=acme`).
    pub subject: String,
    /// The issuer, likewise.
    pub issuer: String,
    /// `NOT_BEFORE - NOT_AFTER` in RFC 3339, as RabbitMQ shows it.
    pub validity: String,
    /// The subject's common names joined with `,` (RabbitMQ's
    /// `ssl_cert_login_from = common_name`); `None` if it has none.
    pub common_name: Option<String>,
}

impl TlsInfo {
    /// Describes a finished handshake.
    pub fn of(conn: &ServerConnection) -> TlsInfo {
        let protocol = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "tlsv1.3".to_owned(),
            Some(ProtocolVersion::TLSv1_2) => "tlsv1.2".to_owned(),
            Some(other) => format!("{other:?}").to_lowercase(),
            None => String::new(),
        };
        let suite = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or_default();
        let (key_exchange, cipher) = suite_names(suite);
        TlsInfo {
            protocol,
            key_exchange,
            cipher,
            hash: "aead".to_owned(),
            peer: conn
                .peer_certificates()
                .and_then(<[_]>::first)
                .and_then(PeerCertificate::parse),
        }
    }
}

impl PeerCertificate {
    /// Reads an already verified certificate; `None` if it cannot be parsed
    /// (it could, or rustls would not have accepted it).
    pub fn parse(der: &CertificateDer<'_>) -> Option<PeerCertificate> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let names: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .collect();
        let validity = cert.validity();
        Some(PeerCertificate {
            subject: subject_string(cert.subject()),
            issuer: subject_string(cert.issuer()),
            validity: format!(
                "{} - {}",
                rfc3339(&validity.not_before),
                rfc3339(&validity.not_after)
            ),
            common_name: (!names.is_empty()).then(|| names.join(",")),
        })
    }
}

/// Splits a rustls suite name (`TLS13_AES_256_GCM_SHA384`,
/// `TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256`) into Erlang's key
/// exchange and cipher names.
fn suite_names(suite: &str) -> (String, String) {
    let without_prf = suite.rsplit_once('_').map_or(suite, |(rest, _)| rest);
    let (kx, cipher) = if let Some(cipher) = without_prf.strip_prefix("TLS13_") {
        ("any", cipher)
    } else if let Some(rest) = without_prf.strip_prefix("TLS_") {
        rest.split_once("_WITH_").unwrap_or(("", rest))
    } else {
        ("", without_prf)
    };
    (kx.to_lowercase(), cipher.to_lowercase())
}

/// RFC 4514 text of a name, as RabbitMQ writes it: the last RDN first,
/// `+` between the attributes of one RDN, `,` between RDNs.
pub fn subject_string(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    let key = short_name(&oid).unwrap_or(&oid);
                    let value = match attr.as_str() {
                        Ok(s) => escape(s),
                        Err(_) => hex(attr.as_slice()),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// The attribute names RabbitMQ's rabbit_cert_info uses; others are shown
/// as their dotted OID (RFC 4514 section 2.3).
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "TITLE",
        "2.5.4.42" => "GIVENNAME",
        "2.5.4.43" => "INITIALS",
        "2.5.4.44" => "GENERATIONQUALIFIER",
        "2.5.4.65" => "PSEUDONYM",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        _ => return None,
    })
}

/// RFC 4514 escaping, as RabbitMQ does it (non-printable bytes as `\XX`).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        match c {
            ' ' | '#' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 32 || (c as u32) >= 126 => {
                let mut buf = [0; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{byte:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::from("#");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `2026-12-02T05:27:59Z`. Certificate times are UTC (RFC 5280 requires
/// the `Z` form), so the parsed date needs no conversion.
pub fn rfc3339(time: &ASN1Time) -> String {
    let t = time.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_follow_erlang() {
        assert_eq!(
            suite_names("TLS13_AES_256_GCM_SHA384"),
            ("any".into(), "aes_256_gcm".into())
        );
        assert_eq!(
            suite_names("TLS13_CHACHA20_POLY1305_SHA256"),
            ("any".into(), "chacha20_poly1305".into())
        );
        assert_eq!(
            suite_names("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            ("ecdhe_rsa".into(), "aes_128_gcm".into())
        );
        assert_eq!(
            suite_names("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
            ("ecdhe_ecdsa".into(), "chacha20_poly1305".into())
        );
    }

    #[test]
    fn values_are_escaped_as_rfc_4514_says() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape(" lead"), "\\ lead");
        assert_eq!(escape("#x"), "\\#x");
        assert_eq!(escape("trail "), "trail\\ ");
        assert_eq!(escape("é"), "\\C3\\A9");
    }
}
