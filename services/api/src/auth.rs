//! Bearer tokens of the control plane (SPEC §6.1): JWTs carrying a role and, for tenant
//! roles, the tenant they act in, signed with the HS256 secret (dev and `iotcore token`) or
//! by an identity provider whose public keys are configured.

use crate::config::AuthConfig;
use crate::keys::{self, KeyError, PublicKey};
use iotcore_store::TenantId;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use utoipa::ToSchema;

/// What a caller may do. `operator` runs the service and manages tenants; the others are
/// bound to one tenant: `admin` and `editor` may change its resources, `viewer` only reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Admin,
    Editor,
    Viewer,
}

impl Role {
    /// Whether tokens of this role are bound to a tenant by their `tenant_id` claim.
    pub fn is_tenant_role(self) -> bool {
        !matches!(self, Role::Operator)
    }

    /// Whether this role may create, change and delete a tenant's resources.
    pub fn can_write(self) -> bool {
        !matches!(self, Role::Viewer)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no role.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: expected operator, admin, editor or viewer")]
pub struct UnknownRole(String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// The claims of a control-plane token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub iss: String,
    pub aud: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no HS256 secret is configured (api.auth.hs256_secret)")]
    NoSecret,
    #[error("the {0} role needs a tenant id")]
    MissingTenant(Role),
    #[error("{0:?} is not a tenant id")]
    InvalidTenant(String),
    #[error("the system clock is before 1970")]
    Clock,
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Mints a token for `role`, valid for `ttl`. Tenant roles need `tenant_id`; an
/// operator's token is bound to no tenant, so a `tenant_id` given for it is ignored.
pub fn mint_token(
    config: &AuthConfig,
    role: Role,
    tenant_id: Option<&str>,
    subject: &str,
    ttl: Duration,
) -> Result<String, TokenError> {
    let secret = config.hs256_secret.as_deref().ok_or(TokenError::NoSecret)?;
    let tenant_id = if role.is_tenant_role() {
        let tenant = tenant_id.ok_or(TokenError::MissingTenant(role))?;
        if TenantId::parse(tenant).is_none() {
            return Err(TokenError::InvalidTenant(tenant.to_owned()));
        }
        Some(tenant.to_owned())
    } else {
        None
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::Clock)?
        .as_secs();
    let claims = Claims {
        sub: subject.to_owned(),
        exp: now.saturating_add(ttl.as_secs()),
        iat: now,
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        role,
        tenant_id,
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Who made a request, as proven by a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
    /// The tenant of a tenant role; always `None` for operators.
    pub tenant_id: Option<TenantId>,
}

/// Loads the configured token keys, to refuse a bad configuration before serving.
pub fn check_keys(config: &AuthConfig) -> Result<(), KeyError> {
    Verifier::new(config).map(drop)
}

/// Verifies tokens against the configured keys, issuer and audience.
pub(crate) struct Verifier {
    hs256: Option<DecodingKey>,
    public: Vec<PublicKey>,
    issuer: String,
    audience: String,
}

/// Most keys a token is tried against: a token without `kid` is checked against every
/// key of its algorithm, and this bounds what one request can cost.
const MAX_KEYS_TRIED: usize = 8;

impl Verifier {
    /// Loads the configured keys; fails on any file that cannot be read or parsed.
    pub(crate) fn new(config: &AuthConfig) -> Result<Verifier, KeyError> {
        let hs256 = config
            .hs256_secret
            .as_deref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let mut public = Vec::new();
        for file in &config.public_keys {
            public.push(keys::load_pem(file)?);
        }
        if let Some(path) = &config.jwks_file {
            public.extend(keys::load_jwks(path)?);
        }
        if hs256.is_none() && public.is_empty() {
            tracing::warn!(
                "neither api.auth.hs256_secret nor public keys are set: every API request will be refused"
            );
        }
        Ok(Verifier {
            hs256,
            public,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation
    }

    /// The keys a token signed with `algorithm` (and naming `kid`) may verify with.
    fn candidates<'a>(
        &'a self,
        algorithm: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        let hs256 = (algorithm == Algorithm::HS256)
            .then_some(self.hs256.as_ref())
            .flatten();
        let public = self
            .public
            .iter()
            .filter(move |k| k.algorithm == algorithm)
            .filter(move |k| match (kid, k.kid.as_deref()) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            })
            .map(|k| &k.key);
        hs256.into_iter().chain(public).take(MAX_KEYS_TRIED)
    }

    /// The principal a token proves, or `None` for any invalid token. Why it is invalid
    /// is logged at debug level only: the caller learns nothing that helps forge one.
    pub(crate) fn verify(&self, token: &str) -> Option<Principal> {
        let header = match decode_header(token) {
            Ok(header) => header,
            Err(err) => {
                tracing::debug!(error = %err, "bearer token refused");
                return None;
            }
        };
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            tracing::debug!(alg = ?header.alg, "bearer token of an unsupported algorithm");
            return None;
        }
        let validation = self.validation(header.alg);
        let claims = self
            .candidates(header.alg, header.kid.as_deref())
            .find_map(|key| match decode::<Claims>(token, key, &validation) {
                Ok(data) => Some(data.claims),
                Err(err) => {
                    tracing::debug!(error = %err, "bearer token refused");
                    None
                }
            })?;
        let tenant_id = if claims.role.is_tenant_role() {
            Some(TenantId::parse(claims.tenant_id.as_deref()?)?)
        } else {
            None
        };
        Some(Principal {
            subject: claims.sub,
            role: claims.role,
            tenant_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some("test-secret".into()),
            ..AuthConfig::default()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn roles_round_trip_through_strings() {
        for role in [Role::Operator, Role::Admin, Role::Editor, Role::Viewer] {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn minted_tokens_verify_with_their_role_and_tenant() {
        let tenant = TenantId::generate();
        let token = mint_token(
            &config(),
            Role::Editor,
            Some(tenant.as_str()),
            "alice",
            HOUR,
        )
        .unwrap();
        let principal = Verifier::new(&config()).unwrap().verify(&token).unwrap();
        assert_eq!(
            principal,
            Principal {
                subject: "alice".into(),
                role: Role::Editor,
                tenant_id: Some(tenant)
            }
        );

        let token = mint_token(&config(), Role::Operator, Some("ignored"), "ops", HOUR).unwrap();
        assert_eq!(
            Verifier::new(&config())
                .unwrap()
                .verify(&token)
                .unwrap()
                .tenant_id,
            None
        );
    }

    #[test]
    fn minting_needs_a_secret_and_a_tenant_for_tenant_roles() {
        assert!(matches!(
            mint_token(&AuthConfig::default(), Role::Operator, None, "ops", HOUR),
            Err(TokenError::NoSecret)
        ));
        assert!(matches!(
            mint_token(&config(), Role::Viewer, None, "v", HOUR),
            Err(TokenError::MissingTenant(_))
        ));
        assert!(matches!(
            mint_token(&config(), Role::Viewer, Some("acme"), "v", HOUR),
            Err(TokenError::InvalidTenant(_))
        ));
    }

    #[test]
    fn tokens_of_another_key_issuer_or_audience_are_refused() {
        let token = mint_token(&config(), Role::Operator, None, "ops", HOUR).unwrap();
        let other_key = AuthConfig {
            hs256_secret: Some("other".into()),
            ..config()
        };
        assert!(Verifier::new(&other_key).unwrap().verify(&token).is_none());
        let other_issuer = AuthConfig {
            issuer: "someone-else".into(),
            ..config()
        };
        assert!(Verifier::new(&other_issuer)
            .unwrap()
            .verify(&token)
            .is_none());
        let other_audience = AuthConfig {
            audience: "someone-else".into(),
            ..config()
        };
        assert!(Verifier::new(&other_audience)
            .unwrap()
            .verify(&token)
            .is_none());
        assert!(Verifier::new(&AuthConfig::default())
            .unwrap()
            .verify(&token)
            .is_none());
        assert!(Verifier::new(&config())
            .unwrap()
            .verify("not.a.token")
            .is_none());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            sub: "ops".into(),
            exp: now - 3600,
            iat: now - 7200,
            iss: "iotcore".into(),
            aud: "iotcore".into(),
            role: Role::Operator,
            tenant_id: None,
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"test-secret"),
        )
        .unwrap();
        assert!(Verifier::new(&config()).unwrap().verify(&token).is_none());
    }
}
