//! `iotcore token`: mints a control-plane JWT with the configured HS256 secret, so that in
//! the dev profile it is accepted by a dev server started with the same environment.

use crate::config::Config;
use iotcore_api::auth::{mint_token, Role};
use iotcore_store::TenantId;
use std::time::Duration;

/// The role a token grants (SPEC §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Manages tenants; not bound to one.
    Operator,
    /// Everything within its tenant.
    Admin,
    /// Everything within its tenant but the tenant's settings.
    Editor,
    /// Reads within its tenant.
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
            RoleArg::Editor => Role::Editor,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

/// What the token is for.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub role: RoleArg,
    pub tenant: Option<String>,
    pub subject: String,
    pub ttl: Duration,
}

/// Why no token was printed.
#[derive(Debug, thiserror::Error)]
pub enum TokenCommandError {
    /// The request does not make sense; exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Signing failed; exit code 1.
    #[error("cannot mint the token: {0}")]
    Mint(String),
}

/// Mints the token described by `request`.
pub fn mint(config: &Config, request: &TokenRequest) -> Result<String, TokenCommandError> {
    let tenant =
        match (request.role, request.tenant.as_deref()) {
            (RoleArg::Operator, Some(_)) => return Err(TokenCommandError::Usage(
                "--tenant does not apply to --role operator: operators are not bound to a tenant"
                    .into(),
            )),
            (RoleArg::Operator, None) => None,
            (_, None) => {
                return Err(TokenCommandError::Usage(
                    "tenant roles need --tenant tnt_…".into(),
                ))
            }
            (_, Some(tenant)) => match TenantId::parse(tenant) {
                Some(_) => Some(tenant),
                None => {
                    return Err(TokenCommandError::Usage(format!(
                        "--tenant {tenant:?} is not a tenant id (tnt_…)"
                    )))
                }
            },
        };
    if request.subject.trim().is_empty() {
        return Err(TokenCommandError::Usage(
            "--subject must not be empty".into(),
        ));
    }
    if request.ttl.is_zero() {
        return Err(TokenCommandError::Usage(
            "--ttl-secs must be at least 1".into(),
        ));
    }
    mint_token(
        &config.api.auth,
        request.role.into(),
        tenant,
        &request.subject,
        request.ttl,
    )
    .map_err(|err| TokenCommandError::Mint(err.to_string()))
}
