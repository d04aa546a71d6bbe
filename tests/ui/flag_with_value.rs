use events::Validate;

#[derive(Validate)]
struct Contact {
    #[event(email = true, nested(deep))]
    email: String,
}

fn main() {}
