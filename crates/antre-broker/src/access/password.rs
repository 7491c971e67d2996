//! Password hashes in RabbitMQ's format, so hashes move between RabbitMQ
//! and antre in definitions files: base64 of a 4-byte salt followed by
//! HASH(salt ++ password), with the hash named by `hashing_algorithm`.

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

/// RabbitMQ's default algorithm (3.6 and later); antre hashes new
/// passwords with it.
pub const SHA256: &str = "rabbit_password_hashing_sha256";
/// The other algorithm RabbitMQ offers (`password_hashing_module`).
pub const SHA512: &str = "rabbit_password_hashing_sha512";

/// A new salted SHA-256 hash of `password`, base64.
pub fn hash(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    let mut salted = salt.to_vec();
    salted.extend_from_slice(
        &Sha256::new()
            .chain_update(salt)
            .chain_update(password)
            .finalize(),
    );
    base64::engine::general_purpose::STANDARD.encode(salted)
}

/// Whether `algorithm` is one antre can check passwords against.
pub fn supported(algorithm: &str) -> bool {
    algorithm == SHA256 || algorithm == SHA512
}

/// Whether `password` matches `hash` (base64, as stored), compared without
/// an early exit. An empty hash (a user without a password, as RabbitMQ
/// allows for certificate logins) or an unknown algorithm matches nothing.
pub fn verify(algorithm: &str, hash: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    if raw.len() < 4 {
        return false;
    }
    let (salt, digest) = raw.split_at(4);
    match algorithm {
        SHA256 => constant_time_eq(
            &Sha256::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize(),
            digest,
        ),
        SHA512 => constant_time_eq(
            &Sha512::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize(),
            digest,
        ),
        _ => false,
    }
}

/// Whether `hash` is base64, as RabbitMQ requires of an imported
/// `password_hash` (it answers 400 `not_base64` otherwise).
pub fn is_base64(hash: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(hash)
        .is_ok()
}

/// Compares secrets without an early exit, so timing does not reveal how
/// much of a guessed password was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_and_verify() {
        let a = hash("s3cret");
        let b = hash("s3cret");
        assert_ne!(a, b, "salted: same password, other hash");
        assert!(!a.contains("s3cret"));
        assert!(verify(SHA256, &a, "s3cret"));
        assert!(!verify(SHA256, &a, "s3cre"));
        assert!(
            !verify(SHA512, &a, "s3cret"),
            "the algorithm is part of the hash"
        );
        assert!(!verify(SHA256, "", ""), "no password matches an empty hash");
    }

    #[test]
    fn a_rabbitmq_sha256_hash_verifies() {
        // Made by RabbitMQ 3.10.8 for `PUT /api/users/bob {"password":"bobpw"}`.
        let from_rabbitmq = "qBOKyyEgGOln0IOsL+VJWaLlEA3wqkrY50y7EGPxMdHUjRo7";
        assert!(verify(SHA256, from_rabbitmq, "bobpw"));
        assert!(!verify(SHA256, from_rabbitmq, "bobp"));
    }

    #[test]
    fn sha512_hashes_verify() {
        let salt = [1u8, 2, 3, 4];
        let mut raw = salt.to_vec();
        raw.extend_from_slice(
            &Sha512::new()
                .chain_update(salt)
                .chain_update("pw")
                .finalize(),
        );
        let hash = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(verify(SHA512, &hash, "pw"));
        assert!(!verify(SHA512, &hash, "px"));
    }
}
