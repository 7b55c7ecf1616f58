//! Entra ID (managed identity) credentials for Azure backends configured without a key.
//!
//! In Azure Container Apps the app runs as a user-assigned identity whose client id arrives in
//! `AZURE_CLIENT_ID`; without it, the system-assigned identity is used.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};

/// The managed identity credential, user-assigned when `client_id` is given.
pub fn managed_identity(
    client_id: Option<&str>,
) -> Result<Arc<dyn TokenCredential>, azure_core::Error> {
    let options = ManagedIdentityCredentialOptions {
        user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_owned())),
        ..Default::default()
    };
    let credential: Arc<dyn TokenCredential> = ManagedIdentityCredential::new(Some(options))?;
    Ok(credential)
}
