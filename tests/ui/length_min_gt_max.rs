use events::Validate;

#[derive(Validate)]
struct Profile {
    #[event(length(min = 10, max = 2))]
    nickname: String,
}

// The stub impl keeps uses of the type compiling: only the mistake above is reported.
fn needs_validate<V: Validate>() {}

fn main() {
    needs_validate::<Profile>();
}
