//! The device, registry or virtual broker of `/v1/{devices|registries|brokers}/{id}/…`:
//! what holds passwords and certificates, and (beside the tenant) what policies attach to.

use iotcore_store::passwords::PasswordOwner;
use iotcore_store::policies::PolicyTarget;
use iotcore_store::{BrokerId, DeviceId, RegistryId};

/// A principal clients authenticate as: a device, a registry client acting for the
/// devices of its registry, or a client of a virtual broker. Handlers of each path parse
/// the id into its own type (a wrong kind of id is a 400) and convert it with `into()`;
/// past that point each operation is written once for all three.
#[derive(Clone, Debug)]
pub enum CredentialOwner {
    Device(DeviceId),
    Registry(RegistryId),
    Broker(BrokerId),
}

impl CredentialOwner {
    /// How problems name it (`device not found`).
    pub fn what(&self) -> &'static str {
        match self {
            CredentialOwner::Device(_) => "device",
            CredentialOwner::Registry(_) => "registry",
            CredentialOwner::Broker(_) => "virtual broker",
        }
    }

    /// Its id, which is also the common name of a certificate the service generates for it.
    pub fn id(&self) -> &str {
        match self {
            CredentialOwner::Device(id) => id.as_str(),
            CredentialOwner::Registry(id) => id.as_str(),
            CredentialOwner::Broker(id) => id.as_str(),
        }
    }

    /// Its resource path, under which its passwords, certificates and policies are.
    pub fn path(&self) -> String {
        let collection = match self {
            CredentialOwner::Device(_) => "devices",
            CredentialOwner::Registry(_) => "registries",
            CredentialOwner::Broker(_) => "brokers",
        };
        format!("/v1/{collection}/{}", self.id())
    }

    /// As the store's password and certificate queries name it.
    pub fn credentials(&self) -> PasswordOwner<'_> {
        match self {
            CredentialOwner::Device(id) => PasswordOwner::Device(id),
            CredentialOwner::Registry(id) => PasswordOwner::Registry(id),
            CredentialOwner::Broker(id) => PasswordOwner::Broker(id),
        }
    }

    /// As the store's policy attachments name it.
    pub fn policy_target(&self) -> PolicyTarget<'_> {
        match self {
            CredentialOwner::Device(id) => PolicyTarget::Device(id),
            CredentialOwner::Registry(id) => PolicyTarget::Registry(id),
            CredentialOwner::Broker(id) => PolicyTarget::Broker(id),
        }
    }
}

impl From<DeviceId> for CredentialOwner {
    fn from(id: DeviceId) -> CredentialOwner {
        CredentialOwner::Device(id)
    }
}

impl From<RegistryId> for CredentialOwner {
    fn from(id: RegistryId) -> CredentialOwner {
        CredentialOwner::Registry(id)
    }
}

impl From<BrokerId> for CredentialOwner {
    fn from(id: BrokerId) -> CredentialOwner {
        CredentialOwner::Broker(id)
    }
}
