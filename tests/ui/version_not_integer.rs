use events::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "user.created", version = "2")]
struct UserCreated {
    id: u64,
}

fn main() {}
