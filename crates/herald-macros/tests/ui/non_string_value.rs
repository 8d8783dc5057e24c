use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = 42)]
struct OrderCreated {
    order_id: u64,
}

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = order.shipped)]
struct OrderShipped {
    order_id: u64,
}

fn main() {}
