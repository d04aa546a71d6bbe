use events::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "user..created")]
struct UserCreated {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = ".user")]
struct Leading {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "user.")]
struct Trailing {
    id: u64,
}

fn main() {}
