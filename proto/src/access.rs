//! Roles and bearer tokens: what the coordinator checks and what `baton token` makes.
//!
//! A token is `baton_` and 43 characters of base64url (32 random bytes); the coordinator's
//! access file holds only its SHA-256, in hex.

use sha2::{Digest, Sha256};
use std::fmt;

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessRole {
    /// Submit jobs; see and cancel one's own.
    Submit,
    /// See every job and agent.
    Read,
    /// Everything a person may do: any job, drain and undrain agents.
    Admin,
    /// Connect as an agent and run jobs.
    Agent,
}

impl AccessRole {
    pub const ALL: [AccessRole; 4] = [Self::Submit, Self::Read, Self::Admin, Self::Agent];

    pub fn name(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Admin => "admin",
            Self::Agent => "agent",
        }
    }
}

impl fmt::Display for AccessRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AccessRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("{s:?} is not a role (submit, read, admin, agent)"))
    }
}

/// A new random bearer token.
pub fn new_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    format!("baton_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of a token, in hex: what the access file holds.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_to_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("baton_") && a.len() == 6 + 43, "{a}");
        assert_eq!(token_sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!("read".parse::<AccessRole>(), Ok(AccessRole::Read));
        assert_eq!("reed".parse::<AccessRole>().unwrap_err(), "\"reed\" is not a role (submit, read, admin, agent)");
    }
}
