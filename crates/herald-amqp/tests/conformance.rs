//! The transport and dead-letter conformance suites against a real
//! RabbitMQ (`HERALD_AMQP_URL`, by default the local one).

mod support;

mod transport {
    use super::support::Rabbit;

    async fn harness() -> Rabbit {
        Rabbit
    }

    herald_testkit::transport_conformance!(harness);
}

mod dead_letters {
    use super::support;
    use herald_amqp::AmqpDeadLetterStore;

    /// The broker dead letters of a prefix of the test's own.
    async fn store() -> AmqpDeadLetterStore {
        support::connect(&support::namespace("dead-letters"))
            .await
            .broker_dead_letters()
    }

    herald_testkit::dead_letter_conformance!(store);
}
