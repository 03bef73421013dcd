use writebehind::Record;

mod other {
    /// Not `uuid::Uuid`: a type whose path only looks like one.
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    pub struct Uuid(pub u128);
}

#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(table = "posts", key(id))]
struct Post {
    author: other::Uuid,
}

fn main() {}
