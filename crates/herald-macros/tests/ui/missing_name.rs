use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, herald::Event)]
#[event()]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
