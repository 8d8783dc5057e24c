use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = "order.created", name = "order.placed")]
struct OrderCreated {
    order_id: u64,
}

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = "order.shipped")]
#[event(name = "order.sent")]
struct OrderShipped {
    order_id: u64,
}

fn main() {}
