use events::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "user.created")]
#[event(name = "user.updated")]
struct UserCreated {
    #[event(email)]
    #[event(length(min = 1, min = 2), email)]
    email: String,
}

// The stub impls keep uses of the type compiling: only the mistake above is reported.
fn needs_event<E: Event>() {}

fn main() {
    needs_event::<UserCreated>();
}
