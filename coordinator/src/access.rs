//! Who is calling, and what they may do.
//!
//! A caller is known by a bearer token (`authorization: Bearer …`, listed by its SHA-256
//! in the access file) or by a client certificate signed by `--client-ca` (named by its
//! subject's common name; an agent unless the access file gives that name other roles).
//! Without an access file and a client CA, and only on a loopback listener, everyone is
//! the anonymous principal with every role: the one-command quick start.
//!
//! Roles: `submit` (submit; see and cancel one's own jobs), `read` (see every job and
//! agent), `admin` (all a person may do), `agent` (connect as an agent, named by its
//! principal). Unknown callers get UNAUTHENTICATED, known ones without the role
//! PERMISSION_DENIED.
//!
//! The access file (YAML; re-read when it changes):
//! ```yaml
//! tokens:
//!   - name: alice
//!     roles: [submit]
//!     sha256: 5f0c…   # `baton token alice --role submit --out alice.token` prints this entry
//! certificates:
//!   - name: ops
//!     roles: [admin]
//! ```

use anyhow::Context as _;
use baton_proto::access::{AccessRole, token_sha256};
use baton_proto::client::AUTHORIZATION;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tonic::{Request, Status};

/// Who made a call, and what they may do.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    /// The token's or certificate's name; empty for the anonymous principal.
    pub name: String,
    roles: Vec<AccessRole>,
}

impl Principal {
    fn anonymous() -> Self {
        Self { name: String::new(), roles: AccessRole::ALL.to_vec() }
    }

    fn has(&self, role: AccessRole) -> bool {
        self.roles.contains(&role) || (role != AccessRole::Agent && self.roles.contains(&AccessRole::Admin))
    }

    /// PERMISSION_DENIED unless the principal has `role`.
    pub fn require(&self, role: AccessRole, call: &str) -> Result<(), Status> {
        if self.has(role) {
            return Ok(());
        }
        Err(Status::permission_denied(format!("{} may not call {call}: it needs the {role} role", self.who())))
    }

    /// Whether the principal sees every job (`read`) rather than only its own (`submit`).
    pub fn sees_all(&self) -> bool {
        self.has(AccessRole::Read)
    }

    /// PERMISSION_DENIED unless the principal may see (read) or change (`admin`) every
    /// job, or the job is its own and it may submit.
    pub fn require_job(&self, owner: &str, role: AccessRole, call: &str) -> Result<(), Status> {
        if self.has(role) || (self.has(AccessRole::Submit) && owner == self.name) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{} may not call {call} on another's job: it needs the {role} role",
            self.who()
        )))
    }

    /// For logs and audit lines.
    pub fn who(&self) -> &str {
        if self.name.is_empty() { "anonymous" } else { &self.name }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    certificates: Vec<CertificateEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    roles: Vec<AccessRole>,
    sha256: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateEntry {
    name: String,
    roles: Vec<AccessRole>,
}

#[derive(Default)]
struct Table {
    /// Token SHA-256 (hex) → principal.
    tokens: HashMap<String, Principal>,
    /// Certificate name → roles other than the default `agent`.
    certificates: HashMap<String, Vec<AccessRole>>,
}

/// Parses an access file; an error names the entry and the rule.
fn parse(text: &str) -> anyhow::Result<Table> {
    let file: AccessFile = if text.trim().is_empty() {
        AccessFile { tokens: vec![], certificates: vec![] }
    } else {
        serde_yaml_ng::from_str(text)?
    };
    let mut table = Table::default();
    for (i, t) in file.tokens.into_iter().enumerate() {
        let sha = t.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!(
                "tokens[{i}].sha256: must be 64 hex digits (the SHA-256 of the token; `baton token` prints it)"
            );
        }
        if t.name.is_empty() {
            anyhow::bail!("tokens[{i}].name: is required");
        }
        if t.roles.is_empty() {
            anyhow::bail!("tokens[{i}].roles: must name at least one role (submit, read, admin, agent)");
        }
        if table.tokens.insert(sha, Principal { name: t.name, roles: t.roles }).is_some() {
            anyhow::bail!("tokens[{i}].sha256: the same token is listed twice");
        }
    }
    for (i, c) in file.certificates.into_iter().enumerate() {
        if c.name.is_empty() {
            anyhow::bail!("certificates[{i}].name: is required");
        }
        table.certificates.insert(c.name, c.roles);
    }
    Ok(table)
}

/// The coordinator's access rules.
pub struct Access {
    /// Unauthenticated calls are refused (anything configured, or not on loopback).
    required: bool,
    file: Option<PathBuf>,
    current: RwLock<(String, Arc<Table>)>,
}

impl Access {
    /// Everyone is the anonymous principal with every role (loopback, nothing configured).
    pub fn open() -> Self {
        Self { required: false, file: None, current: RwLock::new((String::new(), Arc::default())) }
    }

    /// Every call must name a principal: a token listed in `file`, or a client certificate.
    pub fn required(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let text = match &file {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("--access-file {}", path.display()))?,
            None => String::new(),
        };
        let table = parse(&text).with_context(|| format!("--access-file {}", file.as_ref().unwrap().display()));
        Ok(Self { required: true, file, current: RwLock::new((text, Arc::new(table?))) })
    }

    /// Re-reads the access file if it changed; one that does not load keeps the old rules.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        let Ok(text) = std::fs::read_to_string(path) else {
            return tracing::warn!(file = %path.display(), "access file unreadable: keeping the loaded one");
        };
        if self.current.read().unwrap_or_else(|e| e.into_inner()).0 == text {
            return;
        }
        match parse(&text) {
            Ok(table) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (text, Arc::new(table));
                tracing::info!(file = %path.display(), "access file reloaded");
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "access file does not load: keeping the old one")
            }
        }
    }

    /// Who made the call: UNAUTHENTICATED when nobody known did and one is required.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        if !self.required {
            return Ok(Principal::anonymous());
        }
        let table = self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone();
        if let Some(value) = request.metadata().get(AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| Status::unauthenticated("authorization: must be `Bearer <token>`"))?;
            return table
                .tokens
                .get(&token_sha256(token.trim()))
                .cloned()
                .ok_or_else(|| Status::unauthenticated("authorization: the bearer token is not in the access file"));
        }
        if let Some(name) = request.peer_certs().and_then(|certs| certs.first().and_then(crate::tls::identity)) {
            let roles = table.certificates.get(&name).cloned().unwrap_or_else(|| vec![AccessRole::Agent]);
            return Ok(Principal { name, roles });
        }
        Err(Status::unauthenticated(
            "this coordinator needs a bearer token (authorization: Bearer <token>) or a client certificate",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(t) = token {
            request.metadata_mut().insert(AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        }
        request
    }

    fn access(text: &str) -> Access {
        Access { required: true, file: None, current: RwLock::new((text.into(), Arc::new(parse(text).unwrap()))) }
    }

    #[test]
    fn tokens_name_principals_and_roles_gate_calls() {
        let text = format!(
            "tokens:\n  - {{name: alice, roles: [submit], sha256: {}}}\n  - {{name: root, roles: [admin], sha256: {}}}\n",
            token_sha256("a-token"),
            token_sha256("r-token").to_uppercase()
        );
        let access = access(&text);
        let alice = access.authenticate(&call(Some("a-token"))).unwrap();
        assert_eq!(alice.who(), "alice");
        alice.require(AccessRole::Submit, "SubmitJob").unwrap();
        let denied = alice.require(AccessRole::Admin, "DrainAgent").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(denied.message(), "alice may not call DrainAgent: it needs the admin role");
        alice.require_job("alice", AccessRole::Read, "GetJob").unwrap();
        assert!(alice.require_job("bob", AccessRole::Read, "GetJob").is_err());
        assert!(!alice.sees_all());
        let root = access.authenticate(&call(Some("r-token"))).unwrap();
        root.require_job("bob", AccessRole::Admin, "CancelJob").unwrap();
        assert!(root.require(AccessRole::Agent, "ConnectAgent").is_err(), "admin is not an agent");

        for bad in [call(None), call(Some("guess"))] {
            assert_eq!(access.authenticate(&bad).unwrap_err().code(), tonic::Code::Unauthenticated);
        }
        let mut basic = Request::new(());
        basic.metadata_mut().insert(AUTHORIZATION, "Basic YTpi".parse().unwrap());
        assert_eq!(access.authenticate(&basic).unwrap_err().message(), "authorization: must be `Bearer <token>`");
        assert_eq!(Access::open().authenticate(&call(None)).unwrap().who(), "anonymous");
    }

    #[test]
    fn a_bad_access_file_names_the_entry_and_rule() {
        let cases = [
            ("tokens:\n  - {name: a, roles: [submit], sha256: abc}\n", "tokens[0].sha256: must be 64 hex digits"),
            ("tokens:\n  - {name: a, roles: [reed], sha256: abc}\n", "unknown variant `reed`"),
            ("tokens:\n  - {name: a, roles: [], sha256: 00}\n", "tokens[0].sha256"),
            ("certificates:\n  - {name: '', roles: [admin]}\n", "certificates[0].name: is required"),
            ("token: []\n", "unknown field `token`"),
        ];
        for (text, expected) in cases {
            let e = parse(text).err().unwrap().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let twice = format!(
            "tokens:\n  - {{name: a, roles: [read], sha256: {0}}}\n  - {{name: b, roles: [read], sha256: {0}}}\n",
            token_sha256("t")
        );
        assert_eq!(parse(&twice).err().unwrap().to_string(), "tokens[1].sha256: the same token is listed twice");
    }
}
