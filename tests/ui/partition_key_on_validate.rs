use events::Validate;

#[derive(Validate)]
struct Line {
    #[event(partition_key)]
    sku: String,
}

// The stub impl keeps uses of the type compiling: only the mistake above is reported.
fn needs_validate<V: Validate>() {}

fn main() {
    needs_validate::<Line>();
}
