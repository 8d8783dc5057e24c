//! The memory transport passes the transport conformance suite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use herald::async_trait;
use herald::transport::{MemoryTransport, Transport};
use herald_testkit::transports::TransportHarness;

/// One in-process broker per namespace, shared by every connection to it.
#[derive(Default)]
struct Memory {
    brokers: Mutex<HashMap<String, MemoryTransport>>,
}

impl Memory {
    fn broker(&self, namespace: &str) -> MemoryTransport {
        self.brokers
            .lock()
            .unwrap()
            .entry(namespace.to_owned())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl TransportHarness for Memory {
    async fn connect(&self, namespace: &str) -> Arc<dyn Transport> {
        Arc::new(self.broker(namespace).connection())
    }

    async fn disrupt(&self, namespace: &str) {
        self.broker(namespace).disconnect();
    }
}

async fn harness() -> Memory {
    Memory::default()
}

herald_testkit::transport_conformance!(harness);
