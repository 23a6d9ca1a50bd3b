//! Server-generated, URL-safe, globally unique identifiers typed by a prefix (SPEC §2),
//! so that an id seen in a log says what it names.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Characters of the random part: lowercase letters and digits, so that every id is a
/// valid MQTT client id, a valid topic level and safe in a URL path.
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// 20 characters of a 36-letter alphabet: about 103 bits of randomness.
const RANDOM_LEN: usize = 20;

fn generate(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(prefix.len() + 1 + RANDOM_LEN);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..RANDOM_LEN {
        id.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    id
}

/// Whether `s` has the shape of an id with `prefix`; cheap input validation for paths
/// and usernames before any query runs.
fn has_shape(s: &str, prefix: &str) -> bool {
    s.len() == prefix.len() + 1 + RANDOM_LEN
        && s.starts_with(prefix)
        && s.as_bytes()[prefix.len()] == b'_'
        && s.as_bytes()[prefix.len() + 1..]
            .iter()
            .all(|b| ALPHABET.contains(b))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(transparent)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new random id.
            pub fn generate() -> Self {
                Self(generate($prefix))
            }

            /// Accepts `s` only when it has the shape of this kind of id.
            pub fn parse(s: &str) -> Option<Self> {
                has_shape(s, $prefix).then(|| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(/** A tenant. */ TenantId, "tnt");
id_type!(/** A registry of devices. */ RegistryId, "reg");
id_type!(/** A device; also its MQTT client id. */ DeviceId, "dev");
id_type!(/** A virtual broker. */ BrokerId, "brk");
id_type!(/** A stored password (the hash, not the secret). */ PasswordId, "pwd");
id_type!(/** A CA certificate of a registry. */ CaCertificateId, "cac");
id_type!(/** A policy. */ PolicyId, "pol");
id_type!(/** A rule. */ RuleId, "rul");
id_type!(/** A rule match in the delivery queue; the webhook envelope id. */ MessageId, "msg");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_carry_their_prefix() {
        let id = DeviceId::generate();
        assert!(id.as_str().starts_with("dev_"));
        assert_eq!(DeviceId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(RegistryId::parse(id.as_str()), None);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "dev_",
            "dev_ABCDEFGHIJKLMNOPQRST",
            "dev_0123456789abcdefghi/",
            "dev-0123456789abcdefghij",
        ] {
            assert_eq!(DeviceId::parse(bad), None, "{bad:?}");
        }
    }
}
