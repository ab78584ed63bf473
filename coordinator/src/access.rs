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
//! jwt:                  # optional: JWTs from an identity provider (OIDC), checked
//!   jwks: /etc/baton/jwks.json   # against its public keys in a JWKS file (re-read too)
//!   issuer: https://login.example.com/
//!   audience: baton
//!   nameClaim: sub      # the principal's name (default sub)
//!   rolesClaim: roles   # its roles: a list or space-separated (default roles)
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
    jwt: Option<JwtEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JwtEntry {
    jwks: PathBuf,
    issuer: String,
    audience: String,
    #[serde(default = "default_name_claim")]
    name_claim: String,
    #[serde(default = "default_roles_claim")]
    roles_claim: String,
}

fn default_name_claim() -> String {
    "sub".into()
}

fn default_roles_claim() -> String {
    "roles".into()
}

/// JWTs an identity provider signed: verified with its public keys, its issuer and this
/// audience, unexpired; the principal and its roles come from the claims.
struct Jwt {
    keys: jsonwebtoken::jwk::JwkSet,
    entry: JwtEntry,
}

impl Jwt {
    fn principal(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a valid JWT: {e}"))?;
        let jwk = match &header.kid {
            Some(kid) => self.keys.find(kid),
            None if self.keys.keys.len() == 1 => self.keys.keys.first(),
            None => None,
        }
        .ok_or("the JWT's signing key (kid) is not in the JWKS")?;
        // The algorithm must be the key's own, when the key names one; the key's type
        // (RSA, EC, OKP) bounds it anyway, and `none` never verifies.
        if jwk.common.key_algorithm.is_some_and(|a| a.to_string() != format!("{:?}", header.alg)) {
            return Err(format!("the JWT's algorithm {:?} is not its key's", header.alg));
        }
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("the JWKS key does not load: {e}"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[&self.entry.issuer]);
        validation.set_audience(&[&self.entry.audience]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| format!("the JWT does not verify: {e}"))?
            .claims;
        let name = claims[&self.entry.name_claim]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("the JWT has no {} claim", self.entry.name_claim))?;
        let roles = match &claims[&self.entry.roles_claim] {
            serde_json::Value::Array(list) => list.iter().filter_map(|r| r.as_str()?.parse().ok()).collect(),
            serde_json::Value::String(text) => text.split_whitespace().filter_map(|r| r.parse().ok()).collect(),
            _ => Vec::new(),
        };
        Ok(Principal { name: name.to_string(), roles })
    }
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
    jwt: Option<Jwt>,
}

/// Reads an access file and the JWKS it names: the rules, and the texts they came from
/// (a change to either is a new version).
fn load(path: &std::path::Path) -> anyhow::Result<(String, Table)> {
    let text = std::fs::read_to_string(path)?;
    let (mut table, jwt) = parse(&text)?;
    let mut source = text;
    if let Some(entry) = jwt {
        let jwks =
            std::fs::read_to_string(&entry.jwks).with_context(|| format!("jwt.jwks {}", entry.jwks.display()))?;
        let keys =
            serde_json::from_str(&jwks).with_context(|| format!("jwt.jwks {}: not a JWKS", entry.jwks.display()))?;
        source.push('\0');
        source.push_str(&jwks);
        table.jwt = Some(Jwt { keys, entry });
    }
    Ok((source, table))
}

/// Parses an access file; an error names the entry and the rule.
fn parse(text: &str) -> anyhow::Result<(Table, Option<JwtEntry>)> {
    let file: AccessFile = if text.trim().is_empty() {
        AccessFile { tokens: vec![], certificates: vec![], jwt: None }
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
    if let Some(jwt) = &file.jwt {
        for (field, value) in [("issuer", &jwt.issuer), ("audience", &jwt.audience)] {
            if value.is_empty() {
                anyhow::bail!("jwt.{field}: is required");
            }
        }
    }
    Ok((table, file.jwt))
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

    /// Every call must name a principal: a token or JWT the access file `file` admits, or
    /// a client certificate.
    pub fn required(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let (source, table) = match &file {
            Some(path) => load(path).with_context(|| format!("--access-file {}", path.display()))?,
            None => Default::default(),
        };
        Ok(Self { required: true, file, current: RwLock::new((source, Arc::new(table))) })
    }

    /// Re-reads the access file (and its JWKS) if either changed; a version that does not
    /// load keeps the old rules.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        match load(path) {
            Ok((source, _)) if self.current.read().unwrap_or_else(|e| e.into_inner()).0 == source => {}
            Ok((source, table)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (source, Arc::new(table));
                tracing::info!(file = %path.display(), "access file reloaded");
            }
            Err(e) => tracing::warn!(
                file = %path.display(), error = %format!("{e:#}"), "access file does not load: keeping the old one"
            ),
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
            // A JWT is three base64url parts joined by dots; baton's own tokens have none.
            if let Some(jwt) = &table.jwt
                && token.matches('.').count() == 2
            {
                return jwt.principal(token.trim()).map_err(|e| Status::unauthenticated(format!("authorization: {e}")));
            }
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
        Access { required: true, file: None, current: RwLock::new((text.into(), Arc::new(parse(text).unwrap().0))) }
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

    #[test]
    fn jwts_of_the_identity_provider_name_principals_and_roles() {
        use base64::Engine as _;
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        use serde_json::json;
        let dir = std::env::temp_dir().join(format!("baton-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwk = |key: &rcgen::KeyPair, kid: &str| {
            let raw = key.public_key_raw();
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..])})
        };
        let (key, stranger) = (rcgen::KeyPair::generate().unwrap(), rcgen::KeyPair::generate().unwrap());
        std::fs::write(dir.join("jwks.json"), json!({"keys": [jwk(&key, "k1")]}).to_string()).unwrap();
        let file = dir.join("access.yaml");
        let text = format!(
            "jwt:\n  jwks: {}\n  issuer: https://idp.example\n  audience: baton\n",
            dir.join("jwks.json").display()
        );
        std::fs::write(&file, text).unwrap();
        let access = Access::required(Some(file)).unwrap();
        let sign = |claims: serde_json::Value, kid: &str, with: &rcgen::KeyPair| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(kid.into());
            let encoding = EncodingKey::from_ec_pem(with.serialize_pem().as_bytes()).unwrap();
            jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
        };
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        let claims = |sub: &str, iss: &str, aud: &str, exp: u64| json!({"sub": sub, "roles": ["read", "not-a-role"], "iss": iss, "aud": aud, "exp": exp});
        let good = sign(claims("carol", "https://idp.example", "baton", exp), "k1", &key);
        let carol = access.authenticate(&call(Some(&good))).unwrap();
        assert_eq!(carol.who(), "carol");
        assert!(carol.sees_all());
        assert!(carol.require(AccessRole::Submit, "SubmitJob").is_err());

        let (header, _) = good.split_once('.').unwrap();
        let forged = format!(
            "{header}.{}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                json!({"sub": "carol", "roles": ["admin"], "iss": "https://idp.example", "aud": "baton", "exp": exp})
                    .to_string()
            ),
            good.rsplit('.').next().unwrap()
        );
        let refused = [
            (sign(claims("carol", "https://idp.example", "baton", 1), "k1", &key), "ExpiredSignature"),
            (sign(claims("carol", "https://idp.example", "other", exp), "k1", &key), "InvalidAudience"),
            (sign(claims("carol", "https://evil.example", "baton", exp), "k1", &key), "InvalidIssuer"),
            (sign(claims("carol", "https://idp.example", "baton", exp), "k2", &key), "(kid) is not in the JWKS"),
            (sign(claims("carol", "https://idp.example", "baton", exp), "k1", &stranger), "InvalidSignature"),
            (sign(claims("", "https://idp.example", "baton", exp), "k1", &key), "no sub claim"),
            (forged, "InvalidSignature"),
        ];
        for (token, expected) in refused {
            let status = access.authenticate(&call(Some(&token))).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().contains(expected), "{expected}: {}", status.message());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
