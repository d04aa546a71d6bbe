use events::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "user.created")]
struct UserCreated(u64);

// The stub impls keep uses of the type compiling: only the mistake above is reported.
fn needs_event<E: Event>() {}

fn main() {
    needs_event::<UserCreated>();
}
