//! Passwords: length rules at the boundary, argon2id hashing off the async runtime.
//!
//! Hashing is deliberately slow (tens of milliseconds of CPU and 19 MiB of memory), so it runs in
//! `spawn_blocking`: on the async workers it would stall every other request on that thread. At most
//! one hash per CPU runs at a time, so a burst of sign-ups queues instead of taking hundreds of
//! blocking threads and gigabytes of memory.

use std::sync::LazyLock;

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;

/// Permits for concurrent hash computations (one per CPU).
static HASHING: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A password that meets the length rules. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// Counts characters, not bytes, and keeps the password exactly as typed (no trimming: spaces
    /// may be part of a passphrase).
    pub fn parse(input: String) -> Result<Password, String> {
        let chars = input.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
        }
        Ok(Password(input))
    }
}

/// The argon2id PHC string of `password` with a fresh random salt (OWASP default parameters).
pub async fn hash_password(password: Password) -> anyhow::Result<String> {
    let permit = HASHING
        .acquire()
        .await
        .context("The hashing semaphore is closed")?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        hash_blocking(&password)
    })
    .await
    .context("Failed to join the password hashing task")?
}

fn hash_blocking(password: &Password) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| anyhow::anyhow!("Failed to encode a salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.0.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("Failed to hash a password: {e}"))?;
    Ok(hash.to_string())
}

/// A hash nobody's password matches, verified against when a login names an unknown email so that
/// the answer takes as long as for a known one. Computed once, on a blocking thread.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    hash_blocking(&Password("no account has this password, ever".into())).unwrap_or_default()
});

/// Computes the dummy hash now (at start-up), so the first unknown-email login is not slower.
pub async fn warm_up() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| LazyLock::force(&DUMMY_HASH).len())
        .await
        .context("Failed to join the password warm-up task")?;
    Ok(())
}

/// Spends the time of one verification and answers `false`: what login does for an unknown email.
pub async fn verify_dummy(candidate: String) -> anyhow::Result<bool> {
    let permit = HASHING
        .acquire()
        .await
        .context("The hashing semaphore is closed")?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _ = verify_blocking(&candidate, &DUMMY_HASH);
        false
    })
    .await
    .context("Failed to join the password verification task")
}

/// Whether `candidate` matches the stored PHC string. For the login route: callers also verify
/// against a dummy hash ([`verify_dummy`]) when the email is unknown, so response time does not
/// reveal which emails exist.
pub async fn verify_password(candidate: String, stored_hash: String) -> anyhow::Result<bool> {
    let permit = HASHING
        .acquire()
        .await
        .context("The hashing semaphore is closed")?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verify_blocking(&candidate, &stored_hash)
    })
    .await
    .context("Failed to join the password verification task")?
}

fn verify_blocking(candidate: &str, stored_hash: &str) -> anyhow::Result<bool> {
    let parsed = PasswordHash::new(stored_hash)
        .map_err(|e| anyhow::anyhow!("Stored password hash is not a PHC string: {e}"))?;
    Ok(Argon2::default()
        .verify_password(candidate.as_bytes(), &parsed)
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_characters() {
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(
            Password::parse("ééééééé".into()).is_err(),
            "7 characters, 14 bytes"
        );
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert!(Password::parse("a".repeat(129)).is_err());
        assert!(Password::parse(String::new()).is_err());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let password = Password::parse("hunter2hunter2".into()).map_err(anyhow::Error::msg);
        assert!(!format!("{password:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_hash_is_argon2id_and_verifies_only_the_right_password() -> anyhow::Result<()> {
        let password = Password::parse("correct horse".into()).map_err(anyhow::Error::msg)?;
        let hash = hash_password(password).await?;
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse".into(), hash.clone()).await?);
        assert!(!verify_password("wrong horse".into(), hash).await?);
        Ok(())
    }

    #[tokio::test]
    async fn the_dummy_hash_matches_nothing() -> anyhow::Result<()> {
        warm_up().await?;
        assert!(!verify_dummy("no account has this password, ever".into()).await?);
        assert!(DUMMY_HASH.starts_with("$argon2id$"));
        Ok(())
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_error_not_a_match() {
        assert!(
            verify_password("anything".into(), "not a hash".into())
                .await
                .is_err()
        );
    }
}
