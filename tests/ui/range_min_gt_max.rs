use events::Validate;

#[derive(Validate)]
struct Reading {
    #[event(range(min = 5, max = -5))]
    celsius: f64,
}

fn main() {}
