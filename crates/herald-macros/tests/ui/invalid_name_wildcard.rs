use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = "order.*")]
struct AnyOrder {
    order_id: u64,
}

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = "order.#")]
enum AllOrders {
    Created { order_id: u64 },
}

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name = "order created")]
struct OrderCreated {
    order_id: u64,
}

fn main() {}
