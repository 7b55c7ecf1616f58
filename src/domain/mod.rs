//! Pure domain types and rules. No I/O lives here: adapters convert provider formats into these
//! types once, at the boundary.

mod context;
mod customer_id;

pub use context::{
    Channel, ConsentRecord, CustomerContext, Role, Turn, TurnTimings, Version, VoiceSession,
    VoiceSessionStatus, WhatsAppProvider, WhatsAppSession,
};
pub use customer_id::{CustomerId, CustomerIdError, CustomerIdKind, mask};
