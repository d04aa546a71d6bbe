use events::Validate;

#[derive(Validate)]
struct Reading {
    #[event(range(min = 5, max = -5))]
    celsius: f64,
    #[event(range(min = 5, max = 2.5))]
    kelvin: f64,
    #[event(range(min = 170141183460469231731687303715884105727, max = 170141183460469231731687303715884105726))]
    count: i128,
    // Bounds in order: no error.
    #[event(range(min = -5, max = 5))]
    offset: i32,
    #[event(range(min = 2.5, max = 5))]
    ratio: f64,
    #[event(range(min = 5, max = 5))]
    exact: u8,
}

fn main() {}
