//! NATS JetStream transport for Herald.
#![warn(missing_docs)]

mod codec;
mod config;
mod dead_letters;
mod names;
mod transport;

pub use crate::config::NatsConfig;
pub use crate::dead_letters::NatsDeadLetters;
pub use crate::names::{pattern_filters, sanitize_prefix, subscriber_filters, subscriber_token};
pub use crate::transport::{NatsTransport, PayloadTooLarge};

/// The transport's name in logs and errors.
const NAME: &str = "nats";

/// Header names: how an event's fields and a dead letter's travel.
pub mod headers {
    pub use crate::codec::{
        CAUSATION_ID, CORRELATION_ID, HEADERS, ID, MSG_ID, ORIGIN_STREAM, ORIGIN_VERSION, POSITION,
        RECORDED_AT, STREAM, TYPE, VERSION,
    };
    pub use crate::dead_letters::{
        ATTEMPTS, DEAD_LETTER_ID, ERRORS, FIRST_FAILED_AT, LAST_ERROR, SUBSCRIBER,
    };
}

#[doc(hidden)]
pub use crate::codec::{decode_event, event_headers};
