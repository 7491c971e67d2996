//! Mutual authentication of two cluster nodes with their shared secret.
//!
//! Before any Raft message, each side proves it knows the secret without
//! sending it, with an HMAC-SHA256 challenge/response in both directions:
//!
//! ```text
//! client → Hello     { node, nonce_c }
//! server → Challenge { node, nonce_s, HMAC(secret, "server" nonce_c nonce_s server-name) }
//! client → Proof     { HMAC(secret, "client" nonce_s nonce_c client-name) }   (or Refused)
//! server → Welcome                                                          (or Refused)
//! ```
//!
//! Nonces are 32 random bytes from the OS generator, so a recorded
//! exchange cannot be replayed; proofs are compared in constant time
//! (`Mac::verify_slice`). A side that finds the other's proof wrong sends
//! `Refused` with the reason before it closes, so both sides log why.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::wire::{read_frame_within, write_frame};

/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The reason both sides give for a secret that does not match.
pub const WRONG_SECRET: &str = "wrong cluster secret";

#[derive(Debug, Serialize, Deserialize)]
enum Handshake {
    Hello {
        node: String,
        nonce: Vec<u8>,
    },
    Challenge {
        node: String,
        nonce: Vec<u8>,
        proof: Vec<u8>,
    },
    Proof {
        proof: Vec<u8>,
    },
    Welcome,
    Refused {
        reason: String,
    },
}

/// Why a link was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The other side does not know our secret (or we refused theirs).
    #[error("{}", WRONG_SECRET)]
    WrongSecret,
    /// The other side refused us, for this reason.
    #[error("{0}")]
    Refused(String),
    /// The other side's name is not in our peer list, or not the one we
    /// dialled.
    #[error("{0}")]
    UnknownPeer(String),
    /// The connection failed or the other side broke the protocol.
    #[error("{0}")]
    Io(String),
    /// The TLS handshake failed: a certificate the other side (or this
    /// one) does not accept, or a side without TLS.
    #[error("{0}")]
    Tls(String),
}

fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

fn mac(secret: &str, role: &str, a: &[u8], b: &[u8], name: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length: new_from_slice cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for part in [role.as_bytes(), a, b, name.as_bytes()] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m
}

fn proof(secret: &str, role: &str, a: &[u8], b: &[u8], name: &str) -> Vec<u8> {
    mac(secret, role, a, b, name)
        .finalize()
        .into_bytes()
        .to_vec()
}

fn verify(secret: &str, role: &str, a: &[u8], b: &[u8], name: &str, got: &[u8]) -> bool {
    mac(secret, role, a, b, name).verify_slice(got).is_ok()
}

/// The secrets a node authenticates with: it proves with `current`, and
/// accepts a peer's proof made with either. Rotating the cluster's secret
/// takes two rolling restarts and never splits the cluster: first every
/// node accepts the new secret as its previous one while it still proves
/// with the old, then every node proves with the new one, accepting the
/// old as its previous; then the old one can go.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    /// What this node proves with.
    pub current: &'a str,
    /// Also accepted from peers, never proved with.
    pub previous: Option<&'a str>,
}

impl Keys<'_> {
    /// Whether `got` is a proof made with either secret.
    fn verify(&self, role: &str, a: &[u8], b: &[u8], name: &str, got: &[u8]) -> bool {
        verify(self.current, role, a, b, name, got)
            || self
                .previous
                .is_some_and(|p| verify(p, role, a, b, name, got))
    }
}

impl<'a> From<&'a str> for Keys<'a> {
    fn from(current: &'a str) -> Keys<'a> {
        Keys {
            current,
            previous: None,
        }
    }
}

fn io(e: impl std::fmt::Display) -> AuthError {
    AuthError::Io(e.to_string())
}

/// The largest handshake frame either side accepts: a name of at most 255
/// bytes, a nonce or proof of 32 bytes (as JSON numbers), or a refusal's
/// reason. A peer that has not proved the secret cannot make a node
/// allocate more than this (a member's frames may be up to 64 MiB).
const MAX_HANDSHAKE_FRAME: usize = 8 * 1024;

async fn read<S: AsyncRead + Unpin>(s: &mut S) -> Result<Handshake, AuthError> {
    read_frame_within(s, MAX_HANDSHAKE_FRAME).await.map_err(io)
}

async fn write<S: AsyncWrite + Unpin>(s: &mut S, m: &Handshake) -> Result<(), AuthError> {
    write_frame(s, m).await.map_err(io)
}

/// The dialling side: proves itself as `me` to the node `expected` (or,
/// with `expected` empty, to whichever node answers: a joining node knows
/// only an address).
pub async fn client<S>(s: &mut S, me: &str, expected: &str, keys: Keys<'_>) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nonce_c = nonce();
    write(
        s,
        &Handshake::Hello {
            node: me.to_owned(),
            nonce: nonce_c.clone(),
        },
    )
    .await?;
    let (node, nonce_s, server_proof) = match read(s).await? {
        Handshake::Challenge { node, nonce, proof } => (node, nonce, proof),
        Handshake::Refused { reason } => return Err(refused(reason)),
        other => return Err(io(format!("unexpected {other:?}"))),
    };
    if !expected.is_empty() && node != expected {
        let reason = format!("expected node '{expected}' at that address, found '{node}'");
        let _ = write(
            s,
            &Handshake::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(AuthError::UnknownPeer(reason));
    }
    if !keys.verify("server", &nonce_c, &nonce_s, &node, &server_proof) {
        let _ = write(
            s,
            &Handshake::Refused {
                reason: WRONG_SECRET.into(),
            },
        )
        .await;
        return Err(AuthError::WrongSecret);
    }
    let p = proof(keys.current, "client", &nonce_s, &nonce_c, me);
    write(s, &Handshake::Proof { proof: p }).await?;
    match read(s).await? {
        Handshake::Welcome => Ok(()),
        Handshake::Refused { reason } => Err(refused(reason)),
        other => Err(io(format!("unexpected {other:?}"))),
    }
}

fn refused(reason: String) -> AuthError {
    if reason == WRONG_SECRET {
        AuthError::WrongSecret
    } else {
        AuthError::Refused(reason)
    }
}

/// What the listening side learnt about a refused peer, for its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The name the peer gave, if it got that far.
    pub node: Option<String>,
    /// Why.
    pub error: AuthError,
}

/// The listening side: checks that the dialler is one of `peers` (any
/// node when `peers` is empty: a node waiting to join) and knows the
/// secret; returns its name.
pub async fn server<S>(
    s: &mut S,
    me: &str,
    peers: &[String],
    keys: Keys<'_>,
) -> Result<String, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let fail = |node: Option<&str>, error| Refusal {
        node: node.map(str::to_owned),
        error,
    };
    let (node, nonce_c) = match read(s).await.map_err(|e| fail(None, e))? {
        Handshake::Hello { node, nonce } => (node, nonce),
        other => return Err(fail(None, io(format!("unexpected {other:?}")))),
    };
    if !peers.is_empty() && !peers.contains(&node) {
        let reason = format!("node '{node}' is not a member of the cluster of '{me}'");
        let _ = write(
            s,
            &Handshake::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(fail(Some(&node), AuthError::UnknownPeer(reason)));
    }
    let nonce_s = nonce();
    let p = proof(keys.current, "server", &nonce_c, &nonce_s, me);
    let challenge = Handshake::Challenge {
        node: me.to_owned(),
        nonce: nonce_s.clone(),
        proof: p,
    };
    write(s, &challenge)
        .await
        .map_err(|e| fail(Some(&node), e))?;
    let client_proof = match read(s).await.map_err(|e| fail(Some(&node), e))? {
        Handshake::Proof { proof } => proof,
        Handshake::Refused { reason } => return Err(fail(Some(&node), refused(reason))),
        other => return Err(fail(Some(&node), io(format!("unexpected {other:?}")))),
    };
    if !keys.verify("client", &nonce_s, &nonce_c, &node, &client_proof) {
        let refusal = Handshake::Refused {
            reason: WRONG_SECRET.into(),
        };
        let _ = write(s, &refusal).await;
        return Err(fail(Some(&node), AuthError::WrongSecret));
    }
    write(s, &Handshake::Welcome)
        .await
        .map_err(|e| fail(Some(&node), e))?;
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn run(
        client_secret: &str,
        server_secret: &str,
    ) -> (Result<(), AuthError>, Result<String, Refusal>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let peers = vec!["n1".to_owned(), "n2".to_owned()];
        let c = client(&mut a, "n1", "n2", client_secret.into());
        let s = server(&mut b, "n2", &peers, server_secret.into());
        tokio::join!(c, s)
    }

    /// A stranger announcing a frame far larger than any handshake is
    /// refused on the 4 bytes of its head: nothing is allocated for it,
    /// and the node does not wait for the body.
    #[tokio::test]
    async fn an_oversized_handshake_frame_is_refused_before_its_body() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&(32u32 << 20).to_be_bytes()).await.unwrap();
        drop(a);
        let refusal = server(&mut b, "n2", &[], "0123456789abcdef".into())
            .await
            .unwrap_err();
        assert!(
            refusal.error.to_string().contains("is over 8192"),
            "{refusal:?}"
        );
        // A member's frame of that size would be read (the limit is the
        // handshake's, not the link's).
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(32u32 << 20).to_be_bytes()).await.unwrap();
        drop(a);
        let err = crate::wire::read_frame::<_, Handshake>(&mut b)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// A rotation's every step authenticates both ways: old with
    /// old-accepting-new, old-accepting-new with new-accepting-old, and
    /// new-accepting-old with new; a node that knows neither is refused.
    #[tokio::test]
    async fn a_secret_is_rotated_without_two_nodes_refusing_each_other() {
        const OLD: &str = "0123456789abcdef";
        const NEW: &str = "new-secret-0123456789";
        let old = Keys::from(OLD);
        let old_then_new = Keys {
            current: OLD,
            previous: Some(NEW),
        };
        let new_then_old = Keys {
            current: NEW,
            previous: Some(OLD),
        };
        let new = Keys::from(NEW);
        let pairs = [
            (old, old_then_new),
            (old_then_new, new_then_old),
            (new_then_old, new),
        ];
        for (x, y) in pairs {
            for (c, s) in [(x, y), (y, x)] {
                let (mut a, mut b) = tokio::io::duplex(4096);
                let peers = vec!["n1".to_owned()];
                let (cr, sr) = tokio::join!(
                    client(&mut a, "n1", "n2", c),
                    server(&mut b, "n2", &peers, s)
                );
                assert_eq!(cr, Ok(()), "{c:?} to {s:?}");
                assert_eq!(sr, Ok("n1".to_owned()), "{c:?} to {s:?}");
            }
        }
        // The old secret alone and the new alone never met: they refuse.
        let (mut a, mut b) = tokio::io::duplex(4096);
        let peers = vec!["n1".to_owned()];
        let (cr, _) = tokio::join!(
            client(&mut a, "n1", "n2", old),
            server(&mut b, "n2", &peers, new)
        );
        assert_eq!(cr, Err(AuthError::WrongSecret));
    }

    #[tokio::test]
    async fn the_same_secret_authenticates_both_sides() {
        let (c, s) = run("0123456789abcdef", "0123456789abcdef").await;
        assert_eq!(c, Ok(()));
        assert_eq!(s.unwrap(), "n1");
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_both_sides_say_why() {
        let (c, s) = run("0123456789abcdef", "fedcba9876543210").await;
        assert_eq!(c, Err(AuthError::WrongSecret));
        let s = s.unwrap_err();
        assert_eq!(s.error, AuthError::WrongSecret);
        assert_eq!(s.node.as_deref(), Some("n1"));
        assert_eq!(s.error.to_string(), "wrong cluster secret");
    }

    #[tokio::test]
    async fn a_joining_node_dials_any_name_and_a_node_waiting_to_join_accepts_any() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let c = client(&mut a, "n4", "", "0123456789abcdef".into());
        let s = server(&mut b, "n1", &[], "0123456789abcdef".into());
        let (c, s) = tokio::join!(c, s);
        assert_eq!(c, Ok(()));
        assert_eq!(s.unwrap(), "n4");
        // The secret is still checked.
        let (mut a, mut b) = tokio::io::duplex(4096);
        let c = client(&mut a, "n4", "", "0123456789abcdef".into());
        let s = server(&mut b, "n1", &[], "fedcba9876543210".into());
        let (c, _) = tokio::join!(c, s);
        assert_eq!(c, Err(AuthError::WrongSecret));
    }

    #[tokio::test]
    async fn an_unknown_node_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let peers = vec!["n2".to_owned()];
        let c = client(&mut a, "n9", "n2", "0123456789abcdef".into());
        let s = server(&mut b, "n2", &peers, "0123456789abcdef".into());
        let (c, s) = tokio::join!(c, s);
        assert!(matches!(c, Err(AuthError::Refused(_))), "{c:?}");
        assert!(matches!(s.unwrap_err().error, AuthError::UnknownPeer(_)));
    }
}
