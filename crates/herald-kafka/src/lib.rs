//! Kafka transport for Herald (docs filled in below).

mod codec;
mod config;
mod consumer;
mod dead_letters;
mod topics;
mod transport;

pub use crate::config::{KafkaConfig, TopicMapping};
pub use crate::dead_letters::KafkaDeadLetters;
pub use crate::transport::KafkaTransport;

/// The transport's name in logs and errors.
const NAME: &str = "kafka";
