use events::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "User.Created")]
struct UserCreated {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "")]
struct Unnamed {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "user created")]
struct Spaced {
    id: u64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "usér")]
struct Accented {
    id: u64,
}

// The stub impls keep uses of the types compiling: only the mistakes above are reported.
fn needs_event<E: Event>() {}

fn main() {
    needs_event::<UserCreated>();
}
