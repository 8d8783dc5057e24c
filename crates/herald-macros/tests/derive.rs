//! Tests of `#[derive(Event)]` on the kinds of types it supports.

use std::fmt::Debug;

use herald::Event;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A plain struct, the common case.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.created")]
struct OrderCreated {
    order_id: u64,
}

/// A unit struct.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "system.heartbeat")]
struct Heartbeat;

/// A tuple struct.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "order.shipped")]
struct OrderShipped(u64, String);

/// A generic struct whose bounds are in a `where` clause.
///
/// serde's own bounds are replaced, as its `T: Deserialize<'de>` would be
/// ambiguous next to the `T: DeserializeOwned` of the `where` clause.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
#[event(name = "batch.received")]
struct BatchReceived<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    items: Vec<T>,
}

/// A generic struct whose bounds are inline, with a const parameter.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "sensor.sampled")]
struct Sampled<T: Serialize + DeserializeOwned + Send + Sync + 'static, const N: usize> {
    #[serde(bound = "T: Serialize + DeserializeOwned")]
    values: Vec<T>,
}

/// An enum, with unit, tuple and struct variants.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "payment.settled")]
enum PaymentSettled {
    Cash,
    Card { last4: String },
    Transfer(String),
}

/// The name rules allow letters, digits, '_' and '-' in every segment.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "user-account_v2.E-mail_Changed.3")]
struct EmailChanged {
    email: String,
}

/// A raw string literal is a string literal too.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[event(name = r"invoice.paid")]
struct InvoicePaid {
    amount_cents: i64,
}

/// Other attributes may sit between and around `#[event]`.
#[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase")]
#[event(name = "customer.renamed")]
#[allow(dead_code)]
struct CustomerRenamed {
    customer_id: u64,
    new_name: String,
}

/// Returns `E::NAME` through a generic bound, as herald itself reads it.
fn name_of<E: Event>() -> &'static str {
    E::NAME
}

/// Serializes `event` to JSON and back, and checks it comes back equal.
fn assert_round_trip<E: Event + Debug + PartialEq>(event: E) -> serde_json::Value {
    let json = serde_json::to_value(&event).expect("serializes");
    let back: E = serde_json::from_value(json.clone()).expect("deserializes");
    assert_eq!(back, event);
    json
}

#[test]
fn derives_the_name_of_a_struct() {
    assert_eq!(<OrderCreated as Event>::NAME, "order.created");
    assert_eq!(<Heartbeat as Event>::NAME, "system.heartbeat");
    assert_eq!(<OrderShipped as Event>::NAME, "order.shipped");
    assert_eq!(name_of::<OrderCreated>(), "order.created");
}

#[test]
fn derives_the_name_of_a_generic_struct_for_every_instantiation() {
    assert_eq!(<BatchReceived<u32> as Event>::NAME, "batch.received");
    assert_eq!(<BatchReceived<String> as Event>::NAME, "batch.received");
    assert_eq!(name_of::<BatchReceived<OrderCreated>>(), "batch.received");
    assert_eq!(<Sampled<f64, 3> as Event>::NAME, "sensor.sampled");
}

#[test]
fn derives_the_name_of_an_enum() {
    assert_eq!(<PaymentSettled as Event>::NAME, "payment.settled");
    assert_eq!(name_of::<PaymentSettled>(), "payment.settled");
}

#[test]
fn accepts_every_allowed_character_and_raw_strings() {
    assert_eq!(
        <EmailChanged as Event>::NAME,
        "user-account_v2.E-mail_Changed.3"
    );
    assert_eq!(<InvoicePaid as Event>::NAME, "invoice.paid");
}

#[test]
fn keeps_serde_round_trips_working_for_a_struct() {
    let json = assert_round_trip(OrderCreated { order_id: 42 });
    assert_eq!(json, serde_json::json!({ "order_id": 42 }));
    assert_round_trip(Heartbeat);
    assert_round_trip(OrderShipped(7, "DHL".to_owned()));
}

#[test]
fn keeps_serde_attributes_working() {
    let json = assert_round_trip(CustomerRenamed {
        customer_id: 1,
        new_name: "Ada".to_owned(),
    });
    assert_eq!(
        json,
        serde_json::json!({ "customerId": 1, "newName": "Ada" })
    );
}

#[test]
fn keeps_serde_round_trips_working_for_a_generic_struct() {
    let json = assert_round_trip(BatchReceived {
        items: vec![OrderCreated { order_id: 1 }, OrderCreated { order_id: 2 }],
    });
    assert_eq!(
        json,
        serde_json::json!({ "items": [{ "order_id": 1 }, { "order_id": 2 }] })
    );
    assert_round_trip(Sampled::<f64, 2> {
        values: vec![0.5, 1.5],
    });
}

#[test]
fn keeps_serde_round_trips_working_for_an_enum() {
    assert_round_trip(PaymentSettled::Cash);
    let json = assert_round_trip(PaymentSettled::Card {
        last4: "4242".to_owned(),
    });
    assert_eq!(json, serde_json::json!({ "Card": { "last4": "4242" } }));
    assert_round_trip(PaymentSettled::Transfer("ref-1".to_owned()));
}

#[test]
fn the_derive_is_also_reachable_from_this_crate() {
    #[derive(Serialize, Deserialize, herald_macros::Event)]
    #[event(name = "direct.use")]
    struct Direct;

    assert_eq!(<Direct as Event>::NAME, "direct.use");
}
