use events::Validate;

#[derive(Validate)]
struct Profile {
    #[event(length())]
    nickname: String,
    #[event(range)]
    age: u8,
}

fn main() {}
