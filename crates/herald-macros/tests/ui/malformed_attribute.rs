use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, herald::Event)]
#[event]
struct Bare;

#[derive(Serialize, Deserialize, herald::Event)]
#[event = "order.created"]
struct NameValue;

#[derive(Serialize, Deserialize, herald::Event)]
#[event(name)]
struct NoValue;

fn main() {}
