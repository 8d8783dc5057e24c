use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = "order..created")]
struct OrderCreated {
    order_id: u64,
}

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = "")]
struct Nameless;

fn main() {}
