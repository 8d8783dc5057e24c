use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, herald::Event)]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
