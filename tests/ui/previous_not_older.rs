use events::Event;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[event(name = "member.joined", version = 2)]
struct JoinedV2 {
    name: String,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "member.joined", version = 2, previous = JoinedV2)]
struct Joined {
    name: String,
}

impl From<JoinedV2> for Joined {
    fn from(v2: JoinedV2) -> Self {
        Self { name: v2.name }
    }
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "member.left")]
struct Left {
    name: String,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "member.gone", version = 2, previous = Left)]
struct Gone {
    name: String,
}

impl From<Left> for Gone {
    fn from(left: Left) -> Self {
        Self { name: left.name }
    }
}

fn main() {
    let _ = Joined::from_version(1, "{}");
    let _ = Gone::from_version(1, "{}");
}
