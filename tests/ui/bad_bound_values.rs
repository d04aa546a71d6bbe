use events::Validate;

#[derive(Validate)]
struct Limits {
    #[event(length(min = -1))]
    name: String,
    #[event(range(max = "10"), custom = "check")]
    count: u32,
}

fn main() {}
