//! Pure domain types and rules. No I/O lives here: adapters convert provider formats into these
//! types once, at the boundary.

mod business_hours;
mod context;
mod customer_id;
mod handoff;
pub mod message;
pub mod outbound;
pub mod template;

pub use business_hours::{BusinessHours, BusinessHoursError};
pub use context::{
    Channel, ConsentRecord, CustomerContext, Role, Turn, TurnTimings, Version, VoiceSession,
    VoiceSessionStatus, WhatsAppProvider, WhatsAppSession,
};
pub use customer_id::{CustomerId, CustomerIdError, CustomerIdKind, mask};
pub use handoff::{
    Applied, Handoff, HandoffFailure, HandoffId, HandoffState, Milestone, StateChange,
    TransitionError,
};
pub use message::{
    ConversationInfo, DeliveryStatus, Direction, InboundContent, InboundMedia, InboundMessage,
    MediaKind, MediaRecord, MessageRecord, Pricing, StatusUpdate,
};
pub use outbound::{Interactive, OutboundMessage, TemplateHeader, TemplateMessage, UrlButton};
