use events::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    #[event(length(min = 3, max = 1))]
    id: String,
    #[event(email, colour)]
    email: String,
}

// The stub impls keep uses of the type compiling: only the mistake above is reported.
fn needs_event<E: Event>() {}

fn main() {
    needs_event::<OrderPlaced>();
}
